"""The whole pipeline from an empty DVC cache, and what a params change costs.

    python bench/pipeline.py           (KERAS_HOME=../shared/keras offline)

Copies the pipeline into a fresh git+DVC repo (empty cache, nothing fetched),
times `dvc repro` on the default params, then the rerun after changing one key
of each kind. Prints wall times, their ratio to the full run, and test accuracy.
"""

import json
import tempfile
from pathlib import Path

import yaml
from _common import copy_pipeline, require_keras_home, timed

require_keras_home()
work = copy_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-bench-")) / "repo")
full = timed(["dvc", "repro"], work)
ev = json.loads((work / "metrics/eval.json").read_text())
head = json.loads((work / "metrics/head.json").read_text())
ft = json.loads((work / "metrics/finetune.json").read_text())
print(f"full dvc repro (empty cache): {full:6.1f} s")
print(f"  test accuracy: fine-tuned {ev['finetuned']['accuracy']:.4f}, head only {ev['head']['accuracy']:.4f}")
print(f"  train_head training {head['fit_seconds']} s; finetune training {ft['fit_seconds']} s")

base = yaml.safe_load((work / "params.yaml").read_text())
changes = [
    ("head.dropout", ("head", "dropout"), 0.3),
    ("freeze", ("freeze",), "block4"),
    ("finetune.learning_rate", ("finetune", "learning_rate"), base["finetune"]["learning_rate"] / 2),
    ("evaluate.gallery", ("evaluate", "gallery"), 8),
]
for label, keys, value in changes:
    changed = yaml.safe_load((work / "params.yaml").read_text())
    node = changed
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    (work / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    seconds = timed(["dvc", "repro"], work)
    print(f"rerun after {label:24s} {seconds:6.1f} s  ({seconds / full:5.1%} of the full run)")
    (work / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    timed(["dvc", "repro"], work)  # back to the defaults (run-cache restore)
