"""Multi-label arithmetic: images that show several of the labels, or none.

A ``data.labels`` CSV with a ``labels`` column (instead of ``label``) makes a
run multi-label. Everything that differs from one label per image and is
not a stage's own plumbing lives here: the check of the delimiter, the
stratified split of label sets (iterative stratification), the per-label
decision thresholds chosen on val, and the test figures (a cell is read into
a label set, and label sets into multi-hot rows, by tlpipe.artifacts). Targets are
multi-hot arrays (images x labels, 0 or 1); probabilities are per-label
sigmoid outputs, independent of each other.
"""

from __future__ import annotations

import random

import numpy as np

from tlpipe.errors import TlpipeError

# Delimiters people use between label names in one cell; one of them inside a
# label name, splitting it into known names, means data.label_delimiter is wrong.
COMMON_DELIMITERS = (" ", ";", "|", ",", "/")
# A label with fewer val positives than this keeps the 0.5 threshold: a threshold
# chosen on one or two images would be noise.
MIN_VAL_POSITIVES = 5


def check_delimiter(label_sets: dict[str, tuple[str, ...]], delimiter: str, where: str) -> None:
    """Stop when label names look like several names joined by another
    delimiter (``a;b`` where ``a`` and ``b`` are labels of other images)."""
    names = {name for labels in label_sets.values() for name in labels}
    for file_name, labels in label_sets.items():
        for name in labels:
            for other in COMMON_DELIMITERS:
                parts = [p.strip() for p in name.split(other) if p.strip()]
                if other != delimiter and len(parts) > 1 and all(p in names for p in parts):
                    raise TlpipeError(
                        f"{where}: the labels of {file_name!r} hold {name!r}, which looks like "
                        f"{', '.join(repr(p) for p in parts)} joined by {other!r}, but data.label_delimiter is "
                        f"{delimiter!r}; set data.label_delimiter: {other!r} in params.yaml (or write the names "
                        f"separated by {delimiter!r}).")


def stratify(items: list[tuple[str, tuple[str, ...]]], fractions: dict[str, float], seed: str) -> dict[str, list[str]]:
    """Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011, as
    scikit-multilearn implements it): ``items`` (key, label set) dealt into
    subsets in ``fractions`` so that every label's images are spread as the
    fractions say. The rarest label still unplaced is dealt first, each image
    to the subset that most lacks that label (then images overall); images
    with no label fill the subsets that lack images. Seeded: ties are broken
    by a shuffle of ``seed``."""
    rng = random.Random(seed)
    names = list(fractions)
    wanted = {s: fractions[s] * len(items) for s in names}
    label_count: dict[str, int] = {}
    for _, labels in items:
        for name in labels:
            label_count[name] = label_count.get(name, 0) + 1
    wanted_label = {s: {name: fractions[s] * n for name, n in label_count.items()} for s in names}
    left = sorted(items)
    rng.shuffle(left)
    out: dict[str, list[str]] = {s: [] for s in names}

    def place(key: str, labels: tuple[str, ...], subset: str) -> None:
        out[subset].append(key)
        wanted[subset] -= 1
        for name in labels:
            wanted_label[subset][name] -= 1

    while any(labels for _, labels in left):
        remaining: dict[str, int] = {}
        for _, labels in left:
            for name in labels:
                remaining[name] = remaining.get(name, 0) + 1
        rarest = min(remaining, key=lambda name: (remaining[name], name))
        keep = []
        for key, labels in left:
            if rarest not in labels:
                keep.append((key, labels))
                continue
            best = max(names, key=lambda s: (wanted_label[s][rarest], wanted[s], -names.index(s)))
            place(key, labels, best)
        left = keep
    for key, labels in left:  # images that show none of the labels
        place(key, labels, max(names, key=lambda s: (wanted[s], -names.index(s))))
    return {s: sorted(keys) for s, keys in out.items()}


def best_f1(truth: np.ndarray, probs: np.ndarray) -> float:
    """The best F1 any threshold on ``probs`` reaches on these images."""
    order = np.argsort(-probs, kind="stable")
    sorted_probs, hits = probs[order], truth[order].astype(np.int64)
    f1 = 2 * np.cumsum(hits) / (np.arange(1, len(probs) + 1) + hits.sum())
    # only where the next probability differs: a threshold cannot split equal probabilities
    ends = np.r_[sorted_probs[1:] < sorted_probs[:-1], True]
    return float(np.max(np.where(ends, f1, 0.0)))


def choose_thresholds(y_val: np.ndarray, val_probs: np.ndarray, classes: list[str]) -> tuple[list[float], dict]:
    """One decision threshold per label, from val: half the best F1 the label
    reaches on val. For calibrated probabilities (the temperature is fitted on
    val first) the threshold that maximises F1 is exactly half the F1 it
    reaches (Lipton, Elkan and Naryanaswamy, 2014). The best F1 is a steady
    figure where the threshold that reaches it on val is not: on the
    cephalopod mosaics' 90 val images those moved from 0.41 to 0.74 and lost
    test F1 against 0.5 (0.778 against 0.824), while half the best F1 gained
    (0.836). A label with fewer than MIN_VAL_POSITIVES val images keeps 0.5
    (the calibrated model's even odds). -> (thresholds, how each was chosen)."""
    thresholds, how = [], {}
    for j, name in enumerate(classes):
        positives = int(y_val[:, j].sum())
        if positives >= MIN_VAL_POSITIVES:
            f1 = best_f1(y_val[:, j], val_probs[:, j])
            thresholds.append(round(f1 / 2, 6))
            how[name] = f"half the best val F1 ({f1:.4f}; {positives} val positives)"
        else:
            thresholds.append(0.5)
            how[name] = f"0.5: {positives} val positives, fewer than {MIN_VAL_POSITIVES}"
    return thresholds, how


def decisions(probs: np.ndarray, thresholds) -> np.ndarray:
    """Each label's yes/no: its probability at or above its threshold."""
    return probs >= np.asarray(thresholds)[None, :]


def scores(y_true: np.ndarray, probs: np.ndarray, classes: list[str], thresholds) -> dict:
    """Every number in eval.json for one multi-label model."""
    from sklearn import metrics as skm

    y_pred = decisions(probs, thresholds).astype(int)
    present = y_true.sum(axis=0) > 0
    ap = np.array([skm.average_precision_score(y_true[:, j], probs[:, j]) if present[j] else np.nan
                   for j in range(len(classes))])
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out = {
        "average_precision_macro": float(np.nanmean(ap)),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "f1_micro": skm.f1_score(y_true, y_pred, average="micro", zero_division=0),
        "subset_accuracy": skm.accuracy_score(y_true, y_pred),
        "hamming_loss": skm.hamming_loss(y_true, y_pred),
        "log_loss": float(np.mean(image_losses(y_true, probs))),
    }
    out = {key: round(float(v), 4) for key, v in out.items()}
    out["per_class"] = {
        name: {"average_precision": None if np.isnan(ap[j]) else round(float(ap[j]), 4),
               "f1": round(float(f[j]), 4), "precision": round(float(p[j]), 4), "recall": round(float(r[j]), 4),
               "threshold": round(float(thresholds[j]), 4), "support": int(s[j])}
        for j, name in enumerate(classes)
    }
    return out


def image_losses(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each image's binary cross-entropy, averaged over the labels (as Keras' BinaryCrossentropy)."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return -np.mean(y_true * np.log(p) + (1 - y_true) * np.log1p(-p), axis=1)
