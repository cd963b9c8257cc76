"""metrics/ holds the headline a person compares across experiments; reports/
holds everything else. The default run's keys are pinned here."""

import json

import pytest
import yaml

from tlpipe import headline, paths

from conftest import REPO

# Every key `dvc metrics show` lists after the default `dvc repro` (params.yaml:
# three export formats, scratch off). Changing it is a change people see.
PINNED = {
    "metrics/data.json:images",
    "metrics/head.json:val_accuracy", "metrics/head.json:val_loss",
    "metrics/finetune.json:shipped", "metrics/finetune.json:tta", "metrics/finetune.json:val_loss",
    "metrics/finetune.json:fit_seconds",
    "metrics/eval.json:accuracy", "metrics/eval.json:balanced_accuracy", "metrics/eval.json:f1_macro",
    "metrics/eval.json:log_loss", "metrics/eval.json:roc_auc", "metrics/eval.json:head_accuracy",
    "metrics/eval.json:coverage", "metrics/eval.json:mean_set_size", "metrics/eval.json:unfamiliar_rate",
    "metrics/export.json:saved_model_accuracy_drop", "metrics/export.json:tflite_float16_accuracy_drop",
    "metrics/export.json:onnx_accuracy_drop",
    "metrics/audit.json:exact_duplicates", "metrics/audit.json:near_duplicates", "metrics/audit.json:label_issues",
}

# Reports as the stages write them (shapes of a real run, figures made up).
SCORES = {"accuracy": 0.98, "balanced_accuracy": 0.98, "f1_macro": 0.98, "f1_weighted": 0.98, "log_loss": 0.04,
          "roc_auc": 0.999, "per_class": {"cats": {"f1": 0.98, "support": 250}, "dogs": {"f1": 0.98, "support": 250}}}
REPORTS = {
    "data": {"classes": 2, "images": {"train": 1999, "val": 500, "test": 500}, "per_class": {}, "rejected": 0},
    "head": {"val_accuracy": 0.994, "val_loss": 0.0156, "solver": "lbfgs", "l2": 0.01,
             "l2_cv_loss": {"1e+00": 0.07, "1e-01": 0.04}},
    "finetune": {"val_accuracy": 0.992, "val_loss": 0.0136, "fit_seconds": 60.9, "shipped": "finetuned", "tta": False,
                 "run_val_losses": [0.0168, 0.0133], "trainable_params": 902786},
    "eval": {"finetuned": SCORES, "head": SCORES,
             "conformal": {"coverage": 0.98, "mean_set_size": 1.0, "per_class_coverage": {"cats": 0.98}},
             "unfamiliar": {"threshold": 0.29, "test_rate": 0.006}, "calibration": {"temperature": 0.85}},
    "export": {"keras": {"accuracy": 0.982, "bytes": 7695897},
               **{fmt: {"accuracy": 0.982, "accuracy_drop": 0.0, "bytes": 1, "max_probability_difference": 0.0}
                  for fmt in ("saved_model", "tflite_float16", "onnx")},
               "shipped": {"mirror_average": False, "test_images": 500}},
    "audit": {"duplicates": {"exact": 0, "near": 1, "cross_split": 0, "cross_label": 0},
              "near_duplicate_similarity": 0.92, "label_issues": 2, "images": 2999},
    "scratch": {"enabled": False},
}


def test_the_default_runs_headline_is_pinned_and_short():
    formats = yaml.safe_load((REPO / "params.yaml").read_text())["export"]["formats"]
    assert formats == ["saved_model", "tflite_float16", "onnx"]  # PINNED's export keys
    keys = {f"{paths.metrics_file(name)}:{key}" for name, report in REPORTS.items()
            for key in headline.headline(name, report)}
    assert keys == PINNED
    assert len(PINNED) <= headline.MAX_KEYS


def test_headline_values_are_flat_and_taken_from_the_report():
    picked = headline.headline("eval", REPORTS["eval"])
    assert picked["accuracy"] == 0.98 and picked["unfamiliar_rate"] == 0.006 and picked["coverage"] == 0.98
    assert headline.headline("data", REPORTS["data"]) == {"images": 2999}
    assert headline.headline("export", REPORTS["export"])["onnx_accuracy_drop"] == 0.0
    for name, report in REPORTS.items():
        assert all(not isinstance(v, (dict, list)) for v in headline.headline(name, report).values()), name


def test_a_figure_the_report_lacks_gives_no_key():
    """ROC-AUC needs every class among test's labels; the scratch baseline may be off."""
    without_auc = {**REPORTS["eval"], "finetuned": {k: v for k, v in SCORES.items() if k != "roc_auc"}}
    assert "roc_auc" not in headline.headline("eval", without_auc)
    assert headline.headline("scratch", {"enabled": False}) == {}
    enabled = {"enabled": True, "val_accuracy": 0.7, "test": {"accuracy": 0.68}}
    assert headline.headline("scratch", enabled) == {"accuracy": 0.68, "val_accuracy": 0.7}


@pytest.mark.parametrize("name", list(headline.HEADLINES) + ["export"])
def test_write_puts_the_report_in_reports_and_the_headline_in_metrics(in_tmp_cwd, name):
    picked = headline.write(name, REPORTS[name])
    assert json.loads(paths.report_file(name).read_text()) == REPORTS[name]
    assert json.loads(paths.metrics_file(name).read_text()) == picked
