"""trust: prediction sets and the unfamiliar-input score, calibrated on val
-> models/trust/ (trust.json and the train images' features).

The shipped model's val probabilities and pooled features (its own head's
input), and the train images' features, come from the frozen prefix extract
stored, through the shipped backbone's trained top (its frozen layers are
extract's, unchanged), or from the images when no prefix is stored: the
sets' threshold comes from val (split conformal, see tlpipe.confidence), and
so does the distance beyond which an image is unfamiliar. The test split is
never read here; evaluate scores both on it.
"""

from __future__ import annotations

import numpy as np

from tlpipe import paths, training
from tlpipe.artifacts import label_indices, load_prefix, read_classes, read_prefix_meta, read_split
from tlpipe.confidence import (Trust, conformal_threshold, features, layers_above_prefix, min_val_images, normalised,
                               prediction_sets, save, split_probabilities_and_features, unfamiliar_scores,
                               unfamiliar_threshold)
from tlpipe.errors import TlpipeError
from tlpipe.params import TrustParams


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
    val_probs, val_features = split_probabilities_and_features(model, "val", val_rows, batch_size, "trust")
    bank = normalised(train_features(model, train_rows, batch_size))
    y_val = label_indices(val_rows, classes)

    multi = y_val.ndim == 2
    threshold = None if multi else conformal_threshold(val_probs, y_val, tp.coverage)
    if multi:
        print("trust: no prediction sets for a multi-label model: its output is a label set already, each label "
              "decided at its threshold chosen on val (docs/trust-and-audit.md)")
    elif threshold >= 1.0:
        print(f"trust: {len(val_rows)} val images are too few for coverage {tp.coverage} (it needs at least "
              f"{min_val_images(tp.coverage)}): every set holds every class")
    val_distances = unfamiliar_scores(val_features, bank, tp.neighbours)
    trust = Trust(
        coverage=tp.coverage,
        threshold=None if multi else round(threshold, 6),
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
    if not multi:
        _print_sets(val_probs, trust, tp.coverage)
    nearest = "nearest" if tp.neighbours == 1 else f"{tp.neighbours}-th nearest"
    print(f"trust: unfamiliar beyond cosine distance {trust.unfamiliar_threshold:.4f} to the {nearest} of "
          f"{len(train_rows)} train images (at most {1 - tp.unfamiliar_quantile:.1%} of familiar images cross it)")
    return trust


def _print_sets(val_probs, trust: Trust, coverage: float) -> None:
    sizes = prediction_sets(val_probs, trust.threshold).sum(axis=1)
    print(f"trust: prediction sets at coverage {coverage}: a class is in the set from probability "
          f"{1 - trust.threshold:.4f}; on val {np.mean(sizes == 1):.1%} hold one class (mean size {sizes.mean():.2f})")
