"""How the fine-tune defaults were chosen: the finetune stage under other params.

    python bench/finetune_grid.py      (KERAS_HOME=../shared/keras offline)

In a fresh copy of the pipeline, runs `dvc repro` once on the defaults, then
once per row below with the params changed (only finetune and evaluate rerun;
everything upstream is shared). Prints val accuracy and val loss at the best
epoch (what a choice may look at) and test accuracy (for the record: never
used to choose), with the finetune stage's training time.
"""

import json
import tempfile
from pathlib import Path

import yaml
from _common import copy_pipeline, require_keras_home, timed

# (label, {dotted key: value}) on top of params.yaml
ROWS = [
    ("defaults", {}),
    ("batch 64", {"finetune.batch_size": 64}),
    ("8 epochs", {"finetune.epochs": 8}),
    ("lr 2e-4", {"finetune.learning_rate": 0.0002}),
    ("lr 5e-4", {"finetune.learning_rate": 0.0005}),
    ("freeze block3", {"freeze": "block3"}),
    ("freeze block5, lr 1e-3", {"freeze": "block5", "finetune.learning_rate": 0.001}),
    ("flip + crop 0.5, 10 epochs", {"finetune.augment.flip": True, "finetune.augment.crop": 0.5,
                                    "finetune.epochs": 10, "finetune.patience": 0}),
    ("freeze none, lr 1e-4, 10 epochs", {"freeze": "none", "finetune.learning_rate": 0.0001,
                                         "finetune.epochs": 10, "finetune.patience": 0}),
]


def with_changes(base: dict, changes: dict) -> dict:
    params = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


require_keras_home()
work = copy_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-grid-")) / "repo")
base = yaml.safe_load((work / "params.yaml").read_text())
print(f"{'change':34s} {'val acc':>8s} {'val loss':>9s} {'test acc':>9s} {'train s':>8s}")
for label, changes in ROWS:
    (work / "params.yaml").write_text(yaml.safe_dump(with_changes(base, changes), sort_keys=False))
    timed(["dvc", "repro"], work)
    ft = json.loads((work / "metrics/finetune.json").read_text())
    test = json.loads((work / "metrics/eval.json").read_text())["finetuned"]["accuracy"]
    print(f"{label:34s} {ft['val_accuracy']:8.3f} {ft['val_loss']:9.4f} {test:9.3f} {ft['fit_seconds']:8.1f}",
          flush=True)
