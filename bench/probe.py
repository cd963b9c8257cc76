"""The linear probe the head must match: scikit-learn's logistic regression on
the pipeline's own cached features (their global average's columns, as the
classic probe pools) and split, C chosen on val.

    python bench/probe.py [REPO]        (REPO: a repository after `dvc repro`; default .)

Standardised features (StandardScaler on train), multinomial logistic
regression (lbfgs), C over 1e-3..1e2 in half decades, chosen by val accuracy
(ties: the lower val log loss). Test is scored once, for the chosen C.
Prints val and test accuracy of the probe, and of the pipeline's head and
shipped model from that repository's metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))


def load(repo: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's globally average-pooled features (with ``pooling: grid``,
    the first columns of the cached ones: the classic probe's) and labels."""
    folder = repo / "data" / "features"
    meta = json.loads((folder / "meta.json").read_text())
    x = np.load(folder / f"{split}.npy")
    return x[:, : meta.get("average_columns", x.shape[1])].astype(np.float64), np.load(folder / f"{split}_labels.npy")


def probe(repo: Path) -> dict:
    """{C, val_accuracy, val_loss, test_accuracy} of the probe chosen on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (load(repo, s) for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = (scaler.transform(x) for x in (x_train, x_val, x_test))
    labels = list(range(int(max(y_train.max(), y_val.max(), y_test.max())) + 1))
    tried = []
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
        probs = model.predict_proba(x_val)
        tried.append((float(np.mean(probs.argmax(1) == y_val)), -log_loss(y_val, probs, labels=labels), c, model))
    val_accuracy, neg_loss, c, model = max(tried, key=lambda t: (t[0], t[1]))
    test_accuracy = float(np.mean(model.predict(x_test) == y_test))
    return {"C": c, "val_accuracy": round(val_accuracy, 4), "val_loss": round(-neg_loss, 4),
            "test_accuracy": round(test_accuracy, 4)}


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    result = probe(repo)
    print(f"probe (C={result['C']:.3g}, chosen on val): val accuracy {result['val_accuracy']:.4f}, "
          f"val loss {result['val_loss']:.4f}, test accuracy {result['test_accuracy']:.4f}")
    head = json.loads((repo / "reports" / "head.json").read_text())
    ft = json.loads((repo / "reports" / "finetune.json").read_text())
    ev = json.loads((repo / "reports" / "eval.json").read_text())
    print(f"head: val accuracy {head['val_accuracy']:.4f}, val loss {head['val_loss']:.4f}, "
          f"test accuracy {ev['head']['accuracy']:.4f}")
    print(f"shipped ({ft['shipped']}, tta {ft['tta']}): val accuracy {ft['val_accuracy']:.4f}, "
          f"test accuracy {ev['finetuned']['accuracy']:.4f}")


if __name__ == "__main__":
    main()
