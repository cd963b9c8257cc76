"""What a run reports, and the few numbers of it that people compare.

Each reporting stage hands its whole report to ``write``: it lands in
``reports/<name>.json`` (a DVC output, never a DVC metric), and the headline
picked from it below in ``metrics/<name>.json``, the DVC metric. So `dvc
metrics show`, `dvc metrics diff` and `dvc exp show` stay a screen wide: the
default run has DEFAULT_RUN_KEYS keys in all (tests pin them), never more than
MAX_KEYS.

A headline key is flat and stable: a name here, the value at a dotted path in
the report. A path the report lacks (ROC-AUC when test misses a class, the
scratch baseline when it is off) gives no key rather than a placeholder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tlpipe import atomic, paths

MAX_KEYS = 24

Pick = str | Callable[[dict], Any]  # a dotted path in the report, or a function of it

HEADLINES: dict[str, dict[str, Pick]] = {
    "data": {"images": lambda r: sum(r["images"].values())},
    "head": {"val_accuracy": "val_accuracy", "val_loss": "val_loss"},
    "finetune": {"shipped": "shipped", "tta": "tta", "val_loss": "val_loss", "fit_seconds": "fit_seconds"},
    # the shipped model on test, and the head it started from
    "eval": {
        "accuracy": "finetuned.accuracy",
        "balanced_accuracy": "finetuned.balanced_accuracy",
        "f1_macro": "finetuned.f1_macro",
        "log_loss": "finetuned.log_loss",
        "roc_auc": "finetuned.roc_auc",
        "head_accuracy": "head.accuracy",
        # multi-label runs (the keys above that they lack give no key)
        "average_precision_macro": "finetuned.average_precision_macro",
        "f1_micro": "finetuned.f1_micro",
        "subset_accuracy": "finetuned.subset_accuracy",
        "head_average_precision_macro": "head.average_precision_macro",
        "coverage": "conformal.coverage",
        "mean_set_size": "conformal.mean_set_size",
        "unfamiliar_rate": "unfamiliar.test_rate",
    },
    "audit": {"exact_duplicates": "duplicates.exact", "near_duplicates": "duplicates.near",
              "label_issues": "label_issues"},
    "scratch": {"accuracy": "test.accuracy", "average_precision_macro": "test.average_precision_macro",
                "val_accuracy": "val_accuracy"},
}


def _export_headline(report: dict) -> dict:
    """Each exported format's test accuracy lost against the Keras model."""
    return {f"{fmt}_accuracy_drop": figures["accuracy_drop"] for fmt, figures in report.items()
            if isinstance(figures, dict) and "accuracy_drop" in figures}


def _at(report: dict, pick: Pick) -> Any:
    if callable(pick):
        return pick(report)
    value: Any = report
    for part in pick.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def headline(name: str, report: dict) -> dict:
    """The keys of ``report`` that metrics/<name>.json holds."""
    if name == "export":
        return _export_headline(report)
    picked = {key: _at(report, pick) for key, pick in HEADLINES[name].items()}
    return {key: value for key, value in picked.items() if value is not None}


def write(name: str, report: dict) -> dict:
    """reports/<name>.json and metrics/<name>.json, each written atomically;
    returns the headline."""
    atomic.write_json(paths.report_file(name), report)
    picked = headline(name, report)
    atomic.write_json(paths.metrics_file(name), picked)
    return picked
