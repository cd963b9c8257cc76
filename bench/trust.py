"""Does the unfamiliar score flag what a model never saw, and do the
prediction sets cover what they promise? Two honest checks on real photos.

    python bench/trust.py [REPO]    (REPO: a repository after `dvc repro` on the default params,
                                     cats vs dogs; default: a fresh copy of the pipeline)

1. The cats-vs-dogs model (REPO) is shown the 400 shared cephalopod photos.
2. A fresh pipeline is trained on three of the four cephalopod classes
   (cuttlefish, octopus, squid; default params otherwise) and shown the
   fourth (nautilus), which it never saw.
Prints, for each: the share of unseen images flagged unfamiliar, the share
of the model's own test images flagged, and the prediction sets' coverage,
mean size and single-class share on test (reports/eval.json); then, for
k = 1, 5, 10, 20 neighbours, how well the score ranks unseen images above
the model's own test images (AUROC) and what it flags at quantiles 0.9 and
0.99 (how trust.neighbours' default was chosen).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml
from _common import REPO, copy_pipeline, repo_from_argv, timed, tool_env

PHOTOS = REPO.parent / "shared" / "data" / "cephalopod_photos.zip"

# Run in a trained repository: how well the distance to the k-th nearest train
# image ranks unseen images above the model's own test images (AUROC), per k.
BY_K = """
import sys
from pathlib import Path
sys.path.insert(0, "src")
import numpy as np
from sklearn.metrics import roc_auc_score
from tlpipe import artifacts, confidence, paths
from tlpipe.layers import load_model
model, bank = load_model(paths.MODEL), confidence.load_bank(paths.TRUST)
unseen = [artifacts.Row(str(p), "unseen", "pil") for p in sorted(Path(sys.argv[1]).rglob("*.jpg"))]
_, f_unseen = confidence.probabilities_and_features(model, unseen, 32, "")
_, f_val = confidence.probabilities_and_features(model, artifacts.read_split("val"), 32, "")
_, f_test = confidence.probabilities_and_features(model, artifacts.read_split("test"), 32, "")
for k in (1, 5, 10, 20):
    d_unseen, d_val, d_test = (confidence.unfamiliar_scores(f, bank, k) for f in (f_unseen, f_val, f_test))
    auc = roc_auc_score(np.r_[np.zeros(len(d_test)), np.ones(len(d_unseen))], np.r_[d_test, d_unseen])
    at = {q: confidence.unfamiliar_threshold(d_val, q) for q in (0.9, 0.99)}
    print(f"  k={k:2d}: AUROC own test vs unseen {auc:.3f}; flagged (unseen / own test) at quantile 0.9: "
          f"{(d_unseen > at[0.9]).mean():.0%} / {(d_test > at[0.9]).mean():.0%}, at 0.99: "
          f"{(d_unseen > at[0.99]).mean():.0%} / {(d_test > at[0.99]).mean():.0%}")
"""


def flagged(repo: Path, folder: Path) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-m", "tlpipe", "predict", str(folder)], cwd=repo, env=tool_env(),
                         capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return sum(r["unfamiliar"] == "true" for r in rows) / len(rows), len(rows)


def report(label: str, repo: Path, unseen: Path) -> None:
    share, n = flagged(repo, unseen)
    ev = json.loads((repo / "reports" / "eval.json").read_text())
    cf, uf = ev["conformal"], ev["unfamiliar"]
    print(f"{label}: unfamiliar: {share:.1%} of {n} unseen images, {uf['test_rate']:.1%} of its own test images; "
          f"prediction sets (target {cf['target_coverage']}): test coverage {cf['coverage']:.3f}, mean size "
          f"{cf['mean_set_size']:.2f}, one class {cf['single_class_share']:.1%}; test accuracy "
          f"{ev['finetuned']['accuracy']:.3f}", flush=True)
    print(subprocess.run([sys.executable, "-c", BY_K, str(unseen)], cwd=repo, env=tool_env(), capture_output=True,
                         text=True, check=True).stdout, end="", flush=True)


def main() -> None:
    if not PHOTOS.is_file():
        raise SystemExit(f"needs {PHOTOS}")
    work = Path(tempfile.mkdtemp(prefix="tlpipe-trust-"))
    with zipfile.ZipFile(PHOTOS) as z:
        z.extractall(work / "photos")
    photos = next(p for p in (work / "photos").rglob("nautilus")).parent
    repo = repo_from_argv("trust", "evaluate")
    report("cats vs dogs, shown 400 cephalopod photos", repo, photos)

    three = work / "three"
    for name in ("cuttlefish", "octopus", "squid"):
        shutil.copytree(photos / name, three / name)
    other = copy_pipeline(work / "repo")
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["data"]["source"] = str(three)
    params["export"]["formats"] = []
    (other / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    timed(["dvc", "repro", "evaluate"], other)
    report("cephalopods without nautilus, shown the 100 nautilus photos", other, photos / "nautilus")


if __name__ == "__main__":
    main()
