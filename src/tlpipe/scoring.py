"""Scoring a classifier's probabilities: every number in eval.json for one model.

Shared by evaluate (head and fine-tuned model) and scratch (the baseline), so
the numbers ``dvc metrics show`` puts side by side come from one arithmetic
(scikit-learn's).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def scores(y_true: np.ndarray, probs: np.ndarray, classes: list[str], top_k: int = 5) -> dict:
    """Every number in eval.json for one model, from true labels and probabilities."""
    k = len(classes)
    labels = list(range(k))
    y_pred = probs.argmax(axis=1)
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    out["log_loss"] = log_loss(y_true, probs)
    present = np.unique(y_true)
    if len(present) == k:  # ROC-AUC needs every class among the true labels
        if k == 2:
            out["roc_auc"] = skm.roc_auc_score(y_true, probs[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels)
    if k > top_k:  # with k <= top_k classes it would always be 1.0
        out[f"top_{top_k}_accuracy"] = skm.top_k_accuracy_score(y_true, probs, k=top_k, labels=labels)
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out = {key: round(float(v), 4) for key, v in out.items()}
    out["per_class"] = {
        name: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
               "f1": round(float(f[i]), 4), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    return out


def multi_label(y_true: np.ndarray) -> bool:
    """Multi-hot targets (images x labels) rather than one class index per image."""
    return np.ndim(y_true) == 2


def reliability(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, images) of each non-empty confidence bin
    (equal widths over [0, 1]), for a reliability diagram. Multi-label: every
    (image, label) decision at even odds is one point."""
    if multi_label(y_true):
        confidence = np.maximum(probs, 1 - probs).ravel()
        correct = ((probs >= 0.5) == (y_true > 0)).ravel()
    else:
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append((float(confidence[mask].mean()), float(correct[mask].mean()), int(mask.sum())))
    return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE: the images' share-weighted gap between confidence and accuracy per bin."""
    n = np.size(y_true)
    return float(sum(count / n * abs(conf - acc) for conf, acc, count in reliability(y_true, probs, bins)))


def image_losses(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each image's negative log-probability of its true class (multi-label:
    its binary cross-entropy, averaged over the labels)."""
    if multi_label(y_true):
        from tlpipe.multilabel import image_losses as label_set_losses

        return label_set_losses(y_true, probs)
    return -np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None))


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class."""
    return float(np.mean(image_losses(y_true, probs)))


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("inf")


# How many standard errors a val-loss gain must exceed to count. A gain that
# one image carries alone comes to exactly one standard error however large
# (mean d/n, standard error |d|/n), so it never counts; two images that agree
# come to about 1.4. A wider margin would refuse most real gains on small val
# sets (40 images, as the tests' and many users' first sets).
MARGIN_SE = 1.0


def gain_in_standard_errors(new_losses: np.ndarray, old_losses: np.ndarray) -> float:
    """How far ``new``'s mean per-image loss is below ``old``'s on the same
    images, in standard errors of the mean paired difference (> 0: lower)."""
    diff = np.asarray(new_losses, np.float64) - np.asarray(old_losses, np.float64)
    se = standard_error(diff)
    if not np.isfinite(se):  # fewer than two images: no evidence either way
        return 0.0
    if se == 0.0:  # the same difference on every image
        return float(np.copysign(np.inf, -diff.mean())) if diff.mean() else 0.0
    return float(-diff.mean() / se)


def clearly_lower(new_losses: np.ndarray, old_losses: np.ndarray) -> bool:
    """Whether ``new`` beats ``old`` on the same images by more than noise: the
    mean paired per-image difference is below zero by more than ``MARGIN_SE``
    standard errors of that mean (a tolerance keeps a one-image gain, exactly
    one standard error, from passing on rounding)."""
    return gain_in_standard_errors(new_losses, old_losses) > MARGIN_SE * (1 + 1e-9)


def beats(y_true: np.ndarray, new_probs: np.ndarray, old_probs: np.ndarray) -> bool:
    """The rule for replacing one model by another on val: a log loss clearly
    lower (``clearly_lower``) and an accuracy not evidently lower: the images it
    newly gets wrong may outnumber those it newly gets right by no more than
    the standard error of that count (McNemar's, sqrt of their sum), so that
    one image decides nothing either way."""
    new_right, old_right = correct(y_true, new_probs), correct(y_true, old_probs)
    lost, won = int(np.sum(old_right & ~new_right)), int(np.sum(new_right & ~old_right))
    accuracy_clearly_lower = lost - won > np.sqrt(lost + won)
    return clearly_lower(image_losses(y_true, new_probs), image_losses(y_true, old_probs)) and not accuracy_clearly_lower


def correct(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Whether each image is classified right: its class ranked first, or
    (multi-label) its label set exactly, each label at even odds."""
    if multi_label(y_true):
        return np.all((probs >= 0.5) == (y_true > 0), axis=1)
    return probs.argmax(axis=1) == y_true


def val_figures(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy), rounded as metrics files report them. Multi-label:
    the accuracy of every (image, label) decision at even odds, as Keras'
    BinaryAccuracy reports it during the fit."""
    return round(log_loss(y_true, probs), 4), round(accuracy(y_true, probs), 4)


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The share of images whose class ranks first; multi-label: of (image,
    label) decisions right at even odds (Keras' BinaryAccuracy)."""
    if multi_label(y_true):
        return float(np.mean((probs >= 0.5) == (y_true > 0)))
    return float(np.mean(probs.argmax(axis=1) == y_true))


def temperature_scaled(probs: np.ndarray, temperature: float, multi_label: bool = False) -> np.ndarray:
    """softmax(log p / T): the same ranking, sharper (T < 1) or softer (T > 1);
    ``multi_label``: sigmoid(logit p / T), each label on its own."""
    if multi_label:
        p = np.clip(probs, 1e-12, 1 - 1e-12)
        return 1 / (1 + np.exp(-(np.log(p) - np.log1p(-p)) / temperature))
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature that minimises the log loss of ``probs`` (fitted on val,
    never on test): one number, so it cannot overfit and keeps every decision."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return log_loss(y_true, temperature_scaled(probs, float(np.exp(log_t)), multi_label(y_true)))

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(best.x)), 4)
