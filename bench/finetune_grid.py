"""How the fine-tune defaults were chosen: backbone x data set x fine-tune recipe.

    python bench/finetune_grid.py [--backbones a,b] [--data cats,signs] [--rows r1,r2]
                                           (KERAS_HOME=../shared/keras offline)

For each data set, a fresh copy of the pipeline; each row is a real `dvc repro`
with only the named params changed (DVC's run-cache shares every stage a row
does not change, so extraction runs once per backbone and freeze boundary).
Prints, per row: the head's and the shipped model's val accuracy and loss (what
a choice may look at), which one was shipped, whether mirror-image test-time
augmentation ships with it and its val loss with it, test accuracy of both (for
the record: never used to choose), fine-tuning's fit time and the row's wall time.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml
from _common import SHARED_KERAS, copy_pipeline, require_keras_home, timed

DATA = {
    "cats": {},  # params.yaml's own source: cats vs dogs (train/ + validation/ folders)
    "signs": {"data.source": str(SHARED_KERAS / "datasets" / "sign_language_digits.zip")},
}
BACKBONES = ["mobilenet_0.75", "mobilenet_v2_0.35", "mobilenet_0.25"]
# (label, {dotted key: value}) on top of params.yaml and the row's backbone
ROWS = {
    "defaults": {},
    "head only": {"freeze": "all"},
    "block5 lr1e-4": {"freeze": "block5", "finetune.learning_rate": 0.0001},
    "block5 lr3e-4": {"freeze": "block5", "finetune.learning_rate": 0.0003},
    "block4 lr1e-4": {"freeze": "block4", "finetune.learning_rate": 0.0001},
    "none lr5e-4 two-phase (10x below head)": {"freeze": "none", "finetune.learning_rate": 0.0005},
    "block4 lr3e-4": {"freeze": "block4", "finetune.learning_rate": 0.0003},
    "block5 lr1e-4 8ep": {"freeze": "block5", "finetune.learning_rate": 0.0001, "finetune.epochs": 8},
}


def with_changes(base: dict, changes: dict) -> dict:
    params = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--data", default=",".join(DATA))
    ap.add_argument("--rows", default=",".join(ROWS))
    args = ap.parse_args()
    require_keras_home()
    header = (f"{'data':6s} {'backbone':18s} {'row':24s} {'head val':>9s} {'val':>6s} {'val loss':>9s} "
              f"{'shipped':>9s} {'tta':>4s} {'tta loss':>9s} {'head test':>9s} {'test':>6s} {'fit s':>6s} {'wall s':>7s}")
    print(header, flush=True)
    for data in args.data.split(","):
        work = copy_pipeline(Path(tempfile.mkdtemp(prefix=f"tlpipe-grid-{data}-")) / "repo")
        base = yaml.safe_load((work / "params.yaml").read_text())
        for backbone in args.backbones.split(","):
            for label in args.rows.split(","):
                changes = {**DATA[data], "backbone": backbone, **ROWS[label]}
                (work / "params.yaml").write_text(yaml.safe_dump(with_changes(base, changes), sort_keys=False))
                start = time.perf_counter()
                timed(["dvc", "repro"], work)
                wall = time.perf_counter() - start
                ft = json.loads((work / "reports/finetune.json").read_text())
                ev = json.loads((work / "reports/eval.json").read_text())
                print(f"{data:6s} {backbone:18s} {label:24s} {ft['head_val_accuracy']:9.4f} "
                      f"{ft['val_accuracy']:6.4f} {ft['val_loss']:9.4f} {ft['shipped']:>9s} "
                      f"{'on' if ft['tta'] else 'off':>4s} {ft.get('val_loss_with_tta', float('nan')):9.4f} "
                      f"{ev['head']['accuracy']:9.4f} {ev['finetuned']['accuracy']:6.4f} "
                      f"{ft['fit_seconds']:6.1f} {wall:7.1f}", flush=True)


if __name__ == "__main__":
    main()
