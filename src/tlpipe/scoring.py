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
    clipped = np.clip(probs, 1e-7, 1.0)
    out["log_loss"] = skm.log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)
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
