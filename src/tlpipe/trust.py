"""trust: prediction sets and the unfamiliar-input score, calibrated on val
-> models/trust/ (trust.json and the train images' features).

The shipped model's val probabilities and pooled features (its own head's
input), and the train images' features, come from the frozen prefix extract
stored, through the shipped backbone's trained top (its frozen layers are
extract's, unchanged), or from the images when no prefix is stored: the
sets' threshold comes from val (split conformal, see tlpipe.confidence), and
so does the distance beyond which an image is unfamiliar. The test split is
never read here; evaluate scores both on it, from the images.
"""

from __future__ import annotations

import numpy as np

from tlpipe import backbones, freeze, paths, training
from tlpipe.artifacts import label_indices, load_prefix, read_classes, read_prefix_meta, read_split
from tlpipe.confidence import (Trust, conformal_threshold, features, min_val_images, normalised, prediction_sets,
                               probabilities_and_features, save, unfamiliar_scores, unfamiliar_threshold)
from tlpipe.errors import TlpipeError
from tlpipe.params import TrustParams


def layers_above_prefix(model):
    """The shipped model's layers above the frozen prefix extract stored (its
    outputs -> the pooled features the head reads), or None when extract
    stored no prefix. Its frozen layers are extract's, unchanged."""
    from tlpipe.layers import backbone_of

    meta = read_prefix_meta()
    if not meta["cached"]:
        return None
    backbone = backbone_of(model)
    plan = freeze.plan(backbone, backbones.get(meta["backbone"]), meta["freeze"])
    if list(plan.boundary.shape[1:]) != meta["shape"]:
        raise TlpipeError(f"{paths.PREFIX} holds outputs of shape {meta['shape']}, not the shipped model's "
                          f"{list(plan.boundary.shape[1:])} at its '{meta['freeze']}' boundary; run `dvc repro`.")
    return freeze.layers_above(backbone, plan)


def train_features(model, train_rows, batch_size: int) -> np.ndarray:
    """The shipped model's pooled features on the train images: the stored
    frozen prefix through the trained layers above it when extract stored one
    (a fraction of a forward pass), else the images through the whole model."""
    import keras

    from tlpipe.layers import backbone_of, compared_columns

    top = layers_above_prefix(model)
    if top is None:
        return features(model, train_rows, batch_size, "trust: train features")
    # the compared columns cut inside the model: predict never holds the rest for every train image
    top = keras.Model(top.input, top.output[:, : compared_columns(backbone_of(model))])
    prefix = load_prefix("train")
    print(f"trust: train features of {len(prefix)} images from {paths.PREFIX} (the layers above "
          f"'{read_prefix_meta()['freeze']}' alone)", flush=True)
    return top.predict(training.disk_batches(prefix, None, batch_size), verbose=0).astype(np.float32)


def val_probabilities_and_features(model, val_rows, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The shipped model's val probabilities and pooled features: the stored
    frozen prefix (with mirror-image TTA, the mirror images' too) through the
    trained layers above it, as finetune scored val when it chose the model
    and its temperature; else the images through the whole model."""
    import keras

    from tlpipe.layers import Mirror, Temperature, backbone_of, compared_columns, head_of, temperature_of

    top = layers_above_prefix(model)
    mirrored = any(isinstance(layer, Mirror) for layer in model.layers)
    if top is None or (mirrored and not paths.prefix_file(paths.MIRRORED_VAL).is_file()):
        return probabilities_and_features(model, val_rows, batch_size, "trust: val")
    pooled = top.output
    probs_and_features = keras.Model(top.input, [head_of(model)(pooled),
                                                 pooled[:, : compared_columns(backbone_of(model))]])
    print(f"trust: val from {paths.PREFIX} (the layers above '{read_prefix_meta()['freeze']}' alone)", flush=True)
    probs, val_features = probs_and_features.predict(training.disk_batches(load_prefix("val"), None, batch_size),
                                                     verbose=0)
    if mirrored:  # the mirror average the shipped model makes, over the mirror images' stored prefix
        on_mirror = probs_and_features.predict(
            training.disk_batches(load_prefix(paths.MIRRORED_VAL), None, batch_size), verbose=0)[0]
        probs = keras.layers.Average(dtype="float32")([probs, on_mirror])
    probs = Temperature(temperature_of(model))(probs)
    return np.asarray(probs, dtype=np.float64), val_features.astype(np.float32)


def run(tp: TrustParams, batch_size: int) -> Trust:
    """models/model.keras + data/prefix (or the val and train images) -> models/trust/;
    reads ``trust.*``, ``evaluate.batch_size``."""
    from tlpipe.layers import load_model

    classes = read_classes()
    val_rows, train_rows = read_split("val"), read_split("train")
    if not val_rows or not train_rows:
        empty = "val" if not val_rows else "train"
        raise TlpipeError(f"{paths.split_csv(empty)} is empty: nothing to calibrate prediction sets on.")
    model = load_model(paths.MODEL)
    val_probs, val_features = val_probabilities_and_features(model, val_rows, batch_size)
    bank = normalised(train_features(model, train_rows, batch_size))
    y_val = label_indices(val_rows, classes)

    threshold = conformal_threshold(val_probs, y_val, tp.coverage)
    if threshold >= 1.0:
        print(f"trust: {len(val_rows)} val images are too few for coverage {tp.coverage} (it needs at least "
              f"{min_val_images(tp.coverage)}): every set holds every class")
    val_distances = unfamiliar_scores(val_features, bank, tp.neighbours)
    trust = Trust(
        coverage=tp.coverage,
        threshold=round(threshold, 6),
        val_images=len(val_rows),
        neighbours=tp.neighbours,
        unfamiliar_quantile=tp.unfamiliar_quantile,
        unfamiliar_threshold=round(unfamiliar_threshold(val_distances, tp.unfamiliar_quantile), 6),
    )
    if trust.unfamiliar_threshold >= 2.0:
        print(f"trust: {len(val_rows)} val images are too few to flag unfamiliar images at quantile "
              f"{tp.unfamiliar_quantile} (it needs at least {min_val_images(tp.unfamiliar_quantile)}): none is "
              f"flagged; lower trust.unfamiliar_quantile (at most {len(val_rows) / (len(val_rows) + 1):.3f} here)")
    save(trust, bank)
    sizes = prediction_sets(val_probs, trust.threshold).sum(axis=1)
    print(f"trust: prediction sets at coverage {tp.coverage}: a class is in the set from probability "
          f"{1 - trust.threshold:.4f}; on val {np.mean(sizes == 1):.1%} hold one class (mean size {sizes.mean():.2f})")
    nearest = "nearest" if tp.neighbours == 1 else f"{tp.neighbours}-th nearest"
    print(f"trust: unfamiliar beyond cosine distance {trust.unfamiliar_threshold:.4f} to the {nearest} of "
          f"{len(train_rows)} train images (at most {1 - tp.unfamiliar_quantile:.1%} of familiar images cross it)")
    return trust
