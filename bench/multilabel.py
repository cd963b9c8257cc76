"""Issue 50's targets: the default params on a multi-label set, against a probe.

    python bench/multilabel.py [--repo REPO]   (KERAS_HOME=../shared/keras offline)

Builds the cephalopod mosaics (../shared/data/make_mosaics.py: 600 2 x 2
mosaics of real photos, 1-3 labels each, a predefined split) into a fresh
copy of the pipeline (empty DVC cache), runs the whole default `dvc repro`
with ``data.labels: labels.csv``, then scores the probe on that run's own
split and cached features: scikit-learn's one-vs-rest logistic regression
(standardised features, their global average's columns as the classic probe
pools), C chosen on val by mean average precision, each label's threshold
chosen on val by its best F1. Test is scored once for each. Targets: the
shipped model's test mAP at least the probe's, its macro F1 within 0.01 of
the probe's or better. ``--repo``: score a repository that already ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from _common import REPO, copy_pipeline, publish, require_keras_home, run_timed, stage_costs, tool_env
from probe import C_GRID, load

SHARED_DATA = REPO.parent / "shared" / "data"


def probe(repo: Path) -> dict:
    """The one-vs-rest probe chosen on val, scored on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (load(repo, s) for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = (scaler.transform(x) for x in (x_train, x_val, x_test))
    tried = []
    for c in C_GRID:
        model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=5000)).fit(x_train, y_train)
        tried.append((average_precision_score(y_val, model.predict_proba(x_val), average="macro"), c, model))
    val_map, c, model = max(tried, key=lambda t: t[0])
    val_probs, test_probs = model.predict_proba(x_val), model.predict_proba(x_test)
    thresholds = []
    for j in range(y_val.shape[1]):
        candidates = np.unique(val_probs[:, j])
        thresholds.append(max(candidates, key=lambda t: f1_score(y_val[:, j], val_probs[:, j] >= t)))
    decided = test_probs >= np.array(thresholds)
    return {"test_probs": test_probs, "y_test": y_test, "C": c, "val_map": round(float(val_map), 4),
            "test_map": round(float(average_precision_score(y_test, test_probs, average="macro")), 4),
            "test_f1_macro": round(float(f1_score(y_test, decided, average="macro", zero_division=0)), 4),
            "thresholds": [round(float(t), 3) for t in thresholds]}


def map_difference_se(repo: Path, y_test: np.ndarray, probe_probs: np.ndarray, resamples: int = 2000) -> float:
    """The paired bootstrap standard error of (shipped - probe) test mAP: how
    much of a difference 90 test images can tell apart."""
    import csv

    from sklearn.metrics import average_precision_score

    classes = json.loads((repo / "data/split/classes.json").read_text())
    with open(repo / "plots/evaluate/predictions.csv", newline="") as f:
        shipped = np.array([[float(r[f"p_{c}"]) for c in classes] for r in csv.DictReader(f)])
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, len(y_test), len(y_test))
        if (y_test[i].sum(axis=0) > 0).all():
            diffs.append(average_precision_score(y_test[i], shipped[i], average="macro")
                         - average_precision_score(y_test[i], probe_probs[i], average="macro"))
    return float(np.std(diffs))


def run_pipeline() -> tuple[Path, float, str]:
    work = copy_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-multilabel-")) / "repo")
    mosaics = work.parent / "cephalopod_mosaics.zip"
    subprocess.run([sys.executable, str(SHARED_DATA / "make_mosaics.py"), str(SHARED_DATA / "cephalopod_photos.zip"),
                    str(mosaics)], check=True, env=tool_env())
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["source"], params["data"]["labels"] = str(mosaics), "labels.csv"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds, out = run_timed(["dvc", "repro"], work)
    return work, seconds, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", help="a repository that already ran the mosaics")
    args = ap.parse_args()
    require_keras_home()
    if args.repo:
        work, seconds, out = Path(args.repo), float("nan"), ""
    else:
        work, seconds, out = run_pipeline()
    baseline = probe(work)
    se = map_difference_se(work, baseline["y_test"], baseline["test_probs"])
    ev = json.loads((work / "reports" / "eval.json").read_text())
    ft = json.loads((work / "reports" / "finetune.json").read_text())
    shipped, head = ev["finetuned"], ev["head"]
    lines = [
        f"cephalopod mosaics, default params ({work})",
        *([("  stages' shares of dvc repro: " + ", ".join(f"{s} {t / seconds:.0%}" for s, (t, _) in
                                                        stage_costs(out).items()))] if out else []),
        f"  probe (one-vs-rest logistic regression, C={baseline['C']:.3g} by val mAP, thresholds by val F1 "
        f"{baseline['thresholds']}): test mAP {baseline['test_map']:.4f}, macro F1 {baseline['test_f1_macro']:.4f}",
        f"  head (exact, sigmoid; at 0.5): test mAP {head['average_precision_macro']:.4f}, macro F1 "
        f"{head['f1_macro']:.4f}",
        f"  shipped ({ft['shipped']}, tta {ft['tta']}, thresholds {ft['thresholds']}): test mAP "
        f"{shipped['average_precision_macro']:.4f}, macro F1 {shipped['f1_macro']:.4f}, micro F1 "
        f"{shipped['f1_micro']:.4f}, exact label sets {shipped['subset_accuracy']:.4f}",
        f"  targets: mAP shipped >= probe: {shipped['average_precision_macro'] >= baseline['test_map']} "
        f"({shipped['average_precision_macro'] - baseline['test_map']:+.4f}, paired bootstrap standard error of the "
        f"difference {se:.4f}); macro F1 within 0.01 of the probe or "
        f"better: {shipped['f1_macro'] >= baseline['test_f1_macro'] - 0.01} "
        f"({shipped['f1_macro'] - baseline['test_f1_macro']:+.4f})",
    ]
    print("\n".join(lines))
    if not args.repo:
        publish("multilabel", "Multi-label: the cephalopod mosaics against a one-vs-rest probe",
                "```text\n" + "\n".join(lines).replace(str(work), "a fresh copy") + "\n```")


if __name__ == "__main__":
    main()
