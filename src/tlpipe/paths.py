"""Every path the pipeline reads or writes, declared once.

Stage scripts take no path arguments: they use these names, and
``tests/test_dvc_yaml.py`` checks that ``dvc.yaml`` declares the same paths.
All paths are relative to the repository root, where DVC runs each stage.
"""

from pathlib import Path

PARAMS = Path("params.yaml")

RAW = Path("data/raw")

SPLIT = Path("data/split")
SPLIT_CSV = {name: SPLIT / f"{name}.csv" for name in ("train", "val", "test")}
CLASSES = SPLIT / "classes.json"
REJECTED = SPLIT / "rejected.csv"

FEATURES = Path("data/features")

MODELS = Path("models")
HEAD_MODEL = MODELS / "head.keras"
MODEL = MODELS / "model.keras"

METRICS = Path("metrics")
DATA_METRICS = METRICS / "data.json"
HEAD_METRICS = METRICS / "head.json"
FINETUNE_METRICS = METRICS / "finetune.json"
EVAL_METRICS = METRICS / "eval.json"

PLOTS = Path("plots")
SCRATCH_METRICS = METRICS / "scratch.json"
HEAD_LOGS = Path("dvclive/head")
FINETUNE_LOGS = Path("dvclive/finetune")
SCRATCH_LOGS = Path("dvclive/scratch")


def features_file(split: str) -> Path:
    return FEATURES / f"{split}.npy"


def labels_file(split: str) -> Path:
    return FEATURES / f"{split}_labels.npy"


FEATURES_META = FEATURES / "meta.json"
