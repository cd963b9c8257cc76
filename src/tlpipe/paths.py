"""Every path the pipeline reads or writes, declared once.

Stage scripts take no path arguments: they use these names, and
``tests/test_dvc_yaml.py`` checks that ``dvc.yaml`` declares the same paths.
All paths are relative to the repository root, where DVC runs each stage.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
# Written by the 'params' stage when params.yaml is valid; fetch depends on it,
# so every stage runs after the check. Its content never changes.
PARAMS_CHECKED = Path("data/params.ok")

RAW = Path("data/raw")


def keras_datasets() -> Path:
    """$KERAS_HOME/datasets (default ~/.keras/datasets), where Keras keeps downloads."""
    import os

    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


# data.corrections' default: reviewed label fixes, kept in git (the header alone: none).
CORRECTIONS = Path("data/corrections.csv")
# Files of a folder source that fetch could not copy (dangling links); split
# adds them to rejected.csv. Hidden, so that it is never taken for data.
FETCH_REJECTED = RAW / ".fetch_rejected.csv"
# Folder names in a source that mean "a predefined split", not "a class".
RAW_SPLIT_FOLDERS = {"train": "train", "validation": "val", "val": "val", "test": "test"}

SPLITS = ("train", "val", "test")
SPLIT = Path("data/split")


def split_csv(split: str, folder: Path = SPLIT) -> Path:
    return folder / f"{split}.csv"


FEATURES = Path("data/features")
# The frozen part of the backbone's outputs for every split (freeze-dependent,
# so apart from the pooled features: a new freeze value leaves those unchanged).
PREFIX = Path("data/prefix")

MODELS = Path("models")
HEAD_MODEL = MODELS / "head.keras"
MODEL = MODELS / "model.keras"
# Prediction sets and the unfamiliar-input score, calibrated on val: trust.json
# and the train images' features (the trust stage).
TRUST = MODELS / "trust"
# The shipped model in the formats export.formats names, with classes.json.
EXPORT = MODELS / "export"

# The few numbers people compare across experiments (DVC metrics: `dvc metrics
# diff`, `dvc exp show`), chosen by tlpipe.headline from each stage's report.
# The few numbers people compare across experiments (DVC metrics: `dvc metrics
# diff`, `dvc exp show`), chosen by tlpipe.headline from each stage's report.
METRICS = Path("metrics")
# Everything each stage reports (per-class tables, per-format figures, the L2
# path, data counts, calibration details), under the same file names: DVC
# outputs like the models (never DVC metrics), so the run-cache restores them.
REPORTS = Path("reports")


def metrics_file(name: str) -> Path:
    return METRICS / f"{name}.json"


def report_file(name: str) -> Path:
    return REPORTS / f"{name}.json"


DATA_METRICS, DATA_REPORT = metrics_file("data"), report_file("data")
HEAD_METRICS, HEAD_REPORT = metrics_file("head"), report_file("head")
FINETUNE_METRICS, FINETUNE_REPORT = metrics_file("finetune"), report_file("finetune")
EVAL_METRICS, EVAL_REPORT = metrics_file("eval"), report_file("eval")
EXPORT_METRICS, EXPORT_REPORT = metrics_file("export"), report_file("export")
AUDIT_METRICS, AUDIT_REPORT = metrics_file("audit"), report_file("audit")
SCRATCH_METRICS, SCRATCH_REPORT = metrics_file("scratch"), report_file("scratch")

# Each stage that draws owns one folder under plots/, so DVC outputs never overlap.
PLOTS = Path("plots/evaluate")
AUDIT_PLOTS = Path("plots/audit")
# What an interrupted stage leaves for its rerun (tlpipe.resume): outside DVC's
# outputs, ignored by git and DVC.
RESUME = Path(".tlpipe/resume")
HEAD_LOGS = Path("dvclive/head")
FINETUNE_LOGS = Path("dvclive/finetune")
SCRATCH_LOGS = Path("dvclive/scratch")


def features_file(split: str, folder: Path = FEATURES) -> Path:
    return folder / f"{split}.npy"


def labels_file(split: str, folder: Path = FEATURES) -> Path:
    return folder / f"{split}_labels.npy"


def copies_file(folder: Path = FEATURES) -> Path:
    """Features of near-copies (resized, re-encoded, cropped) of a sample of
    train images: what calibrates the audit's near-duplicate threshold."""
    return folder / "copies.npy"


def copies_of_file(folder: Path = FEATURES) -> Path:
    """For each row of copies_file: the index of its original in train.csv."""
    return folder / "copies_of.npy"


def features_meta(folder: Path = FEATURES) -> Path:
    return folder / "meta.json"


def prefix_file(split: str, folder: Path = PREFIX) -> Path:
    return folder / f"{split}.npy"


def mirrored(split: str) -> str:
    """The name under which data/prefix stores ``split``'s mirror images' outputs
    (val's), so finetune chooses the mirror average on stored outputs too."""
    return f"{split}_mirror"


def prefix_meta(folder: Path = PREFIX) -> Path:
    return folder / "meta.json"


def task_file(folder: Path = SPLIT) -> Path:
    """Multi-label runs only: {"multi_label": true, "delimiter": ...} (absent: one label per image)."""
    return folder / "task.json"


def classes_file(folder: Path = SPLIT) -> Path:
    return folder / "classes.json"


def rejected_file(folder: Path = SPLIT) -> Path:
    return folder / "rejected.csv"


def image_hashes_file(folder: Path = SPLIT) -> Path:
    """Every image of the splits with the SHA-256 of its bytes (sha256sum's
    format, paths under data/raw): what the stages after split depend on in
    place of data/raw, whose tens of thousands of files DVC would otherwise
    hash anew for each of them."""
    return folder / "images.sha256"


def perceptual_hashes_file(folder: Path = SPLIT) -> Path:
    """Every image of the splits with its 64-bit perceptual hash (hex): what
    the audit finds resized and re-encoded copies by, beside the features."""
    return folder / "perceptual_hashes.csv"


CLASSES = classes_file()
REJECTED = rejected_file()
FEATURES_META = features_meta()
