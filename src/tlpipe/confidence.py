"""How far a prediction can be relied on: prediction sets with a coverage
guarantee, and a score of how unfamiliar an image is. Calibrated on val by
the trust stage, stored beside the model (models/trust/), read by evaluate
(scored on test) and by ``tlpipe predict``.

**Prediction sets** are split conformal with the plain score threshold (LAC,
Sadinle et al. 2019): the score of an image is 1 - the probability of its
true class; the threshold is the ⌈(n+1)·coverage⌉-th smallest of the n val
scores, and a set holds every class whose probability is at least
1 - threshold. For val and test images drawn alike, a set holds the true
class with probability at least ``coverage``. Of the conformal rules this one
gives the smallest sets on average; adaptive sets (APS/RAPS) even out
coverage across classes at the price of larger sets, so the per-class
coverage is reported on test instead (plots/evaluate/conformal/). The top
class is always in the set: a set is never empty.

**Unfamiliar** is the cosine distance from an image's globally average-pooled
features (what the shipped model's head reads; with grid pooling the first
fifth of it, where the object sits not counting) to its k-th nearest train image (deep
nearest neighbours, Sun et al. 2022), flagged beyond the same conformal rank
of the val images' distances: at most 1 - quantile of familiar images are
flagged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tlpipe import atomic, paths
from tlpipe.errors import TlpipeError
from tlpipe.similarity import block_rows, normalised


@dataclass(frozen=True)
class Trust:
    """What ``models/trust/trust.json`` holds (the train bank is beside it)."""

    coverage: float  # the target
    threshold: float | None  # conformal: classes with probability >= 1 - threshold are in the set (multi-label: None)
    val_images: int
    neighbours: int
    unfamiliar_quantile: float
    unfamiliar_threshold: float


def conformal_quantile(scores: np.ndarray, level: float) -> float | None:
    """The ⌈(n+1)·level⌉-th smallest of n val scores: a new score drawn alike
    stays at or below it with probability at least ``level``. None when n is
    too small for that promise (see min_val_images)."""
    n = len(scores)
    rank = math.ceil((n + 1) * level - 1e-9)  # (9 + 1) * 0.9 is 9.000000000000002 in floats
    return None if rank > n else float(np.sort(scores)[rank - 1])


def conformal_threshold(probs: np.ndarray, y_true: np.ndarray, coverage: float) -> float:
    """The prediction sets' threshold on val scores 1 - p(true class); 1.0 (every
    class in every set) when val has too few images for the coverage asked."""
    threshold = conformal_quantile(1.0 - probs[np.arange(len(y_true)), y_true], coverage)
    return 1.0 if threshold is None else threshold


def unfamiliar_threshold(val_distances: np.ndarray, quantile: float) -> float:
    """The distance beyond which an image is unfamiliar: at most 1 - ``quantile``
    of images drawn like val cross it. 2.0, the largest cosine distance (nothing
    is flagged), when val has too few images for that promise."""
    threshold = conformal_quantile(val_distances, quantile)
    return 2.0 if threshold is None else threshold


def min_val_images(coverage: float) -> int:
    """The fewest val images that give a threshold below 1 at ``coverage``."""
    return math.ceil(coverage / (1 - coverage) - 1e-9)


def prediction_sets(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(images, classes) bool: the classes in each image's set (the top class always)."""
    sets = probs >= 1.0 - threshold - 1e-12
    sets[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return sets


def set_figures(sets: np.ndarray, y_true: np.ndarray, classes: list[str], coverage: float) -> dict:
    """What eval.json reports of the sets on test."""
    covered = sets[np.arange(len(y_true)), y_true]
    sizes = sets.sum(axis=1)
    return {
        "target_coverage": coverage,
        "coverage": round(float(covered.mean()), 4),
        "mean_set_size": round(float(sizes.mean()), 4),
        "single_class_share": round(float((sizes == 1).mean()), 4),
        "per_class_coverage": {c: round(float(covered[y_true == i].mean()), 4) if (y_true == i).any() else None
                               for i, c in enumerate(classes)},
    }


def probabilities_and_features(shipped, rows, batch_size: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """The shipped model's probabilities and pooled features on image rows, in one pass."""
    from tlpipe import images
    from tlpipe.artifacts import sources
    from tlpipe.layers import with_features

    probs, features = [], []
    for p, f in images.predict(with_features(shipped), *sources(rows), int(shipped.input_shape[1]), batch_size, desc):
        probs.append(p)
        features.append(f)
    return np.concatenate(probs).astype(np.float64), np.concatenate(features).astype(np.float32)


def layers_above_prefix(shipped):
    """The shipped model's layers above the frozen prefix extract stored (its
    outputs -> the pooled features the head reads), or None when extract
    stored no prefix. Its frozen layers are extract's, unchanged."""
    from tlpipe import backbones, freeze
    from tlpipe.artifacts import read_prefix_meta
    from tlpipe.layers import backbone_of

    meta = read_prefix_meta()
    if not meta["cached"]:
        return None
    backbone = backbone_of(shipped)
    plan = freeze.plan(backbone, backbones.get(meta["backbone"]), meta["freeze"])
    if list(plan.boundary.shape[1:]) != meta["shape"]:
        raise TlpipeError(f"{paths.PREFIX} holds outputs of shape {meta['shape']}, not the shipped model's "
                          f"{list(plan.boundary.shape[1:])} at its '{meta['freeze']}' boundary; run `dvc repro`.")
    return freeze.layers_above(backbone, plan)


def split_probabilities_and_features(shipped, split: str, rows, batch_size: int,
                                     stage: str) -> tuple[np.ndarray, np.ndarray]:
    """The shipped model's probabilities and pooled features on a split: the
    frozen prefix extract stored for it through the trained layers above it,
    as finetune scored val when it chose the model; else the images through
    the whole model. A mirror-averaged model's mirror half reads the mirror
    images' stored prefix (val's), or the images themselves (test's: storing
    it would cost extract a pass for a model that rarely ships)."""
    import keras

    from tlpipe import images, training
    from tlpipe.artifacts import load_prefix, read_prefix_meta, sources
    from tlpipe.layers import (Mirror, Temperature, backbone_of, compared_columns, head_of, on_mirror_images,
                               temperature_of, thresholds_of)

    top = layers_above_prefix(shipped)
    if top is None or not paths.prefix_file(split).is_file():
        return probabilities_and_features(shipped, rows, batch_size, f"{stage}: {split} images")
    prefix = load_prefix(split)
    if len(prefix) != len(rows):
        raise TlpipeError(f"{paths.PREFIX} holds {len(prefix)} {split} rows, {paths.split_csv(split)} {len(rows)}; "
                          "run `dvc repro` so that extract reruns on the current split.")
    pooled = top.output
    probs_and_features = keras.Model(top.input, [head_of(shipped)(pooled),
                                                 pooled[:, : compared_columns(backbone_of(shipped))]])
    print(f"{stage}: {split} from {paths.PREFIX} (the layers above '{read_prefix_meta()['freeze']}' alone)",
          flush=True)
    probs, split_features = probs_and_features.predict(training.disk_batches(prefix, None, batch_size), verbose=0)
    if any(isinstance(layer, Mirror) for layer in shipped.layers):  # the mirror average the shipped model makes
        if paths.prefix_file(paths.mirrored(split)).is_file():
            mirror_prefix = training.disk_batches(load_prefix(paths.mirrored(split)), None, batch_size)
            on_mirror = probs_and_features.predict(mirror_prefix, verbose=0)[0]
        else:
            size = int(shipped.input_shape[1])
            on_mirror = np.concatenate(list(images.predict(on_mirror_images(shipped), *sources(rows), size,
                                                           batch_size, f"{stage}: {split}'s mirror images")))
        probs = (probs + on_mirror) / 2
    probs = Temperature(temperature_of(shipped), thresholds_of(shipped))(probs)
    return np.asarray(probs, dtype=np.float64), split_features.astype(np.float32)


def features(shipped, rows, batch_size: int, desc: str) -> np.ndarray:
    """The shipped model's pooled features on image rows (the plain images: one forward pass each)."""
    from tlpipe import images
    from tlpipe.artifacts import sources
    from tlpipe.layers import features_of

    batches = images.predict(features_of(shipped), *sources(rows), int(shipped.input_shape[1]), batch_size, desc)
    return np.concatenate(list(batches)).astype(np.float32)


def unfamiliar_scores(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance of each (raw) feature row to its k-th nearest row of the
    normalised ``bank``."""
    queries = normalised(features)
    bank = np.asarray(bank, dtype=np.float32)
    k = min(k, len(bank))
    out = np.empty(len(queries), dtype=np.float64)
    block = block_rows(len(bank))
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ bank.T
        kth = np.partition(-sims, k - 1, axis=1)[:, k - 1]
        out[start : start + block] = 1.0 + kth  # 1 - similarity
    return np.clip(out, 0.0, 2.0)


def save(trust: Trust, bank: np.ndarray, folder: Path = paths.TRUST) -> None:
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "trust.json").write_text(json.dumps(asdict(trust), indent=2) + "\n")
        np.save(tmp / "train_features.npy", normalised(bank).astype(np.float16))


def load(folder: Path) -> Trust | None:
    """The trust file in ``folder`` (None when there is none)."""
    path = folder / "trust.json"
    if not path.is_file():
        return None
    try:
        return Trust(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise TlpipeError(f"{path} is not a tlpipe trust file ({err}); rebuild it with `dvc repro trust`.") from None


def load_bank(folder: Path) -> np.ndarray | None:
    path = folder / "train_features.npy"
    return np.load(path) if path.is_file() else None
