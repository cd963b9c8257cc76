"""tlpipe compare: `dvc exp show --json` as one screen of experiments."""

import pytest

from tlpipe import compare
from tlpipe.errors import TlpipeError


def state(rev, name, params, accuracy=None, shipped="finetuned", experiments=None):
    """One entry of `dvc exp show --json`, as DVC 3 writes it."""
    metrics = {"metrics/eval.json": {"data": {"accuracy": accuracy, "f1_macro": accuracy, "log_loss": 0.04,
                                              "head_accuracy": 0.98}},
               "metrics/finetune.json": {"data": {"val_loss": 0.0136, "shipped": shipped, "fit_seconds": 60.88}}}
    if accuracy is None:
        metrics = {}
    return {"rev": rev, "name": name, "error": None, "experiments": experiments,
            "data": {"rev": rev, "params": {"params.yaml": {"data": params}}, "metrics": metrics}}


BASE = {"freeze": "auto", "finetune": {"learning_rate": 0.0001, "runs": 3}, "export": {"formats": ["onnx"]}}
SHOWN = [
    state("workspace", None, BASE, accuracy=0.982),
    state("f0427939ff197870d0ab46e7987bf3dc5020a1b0", "main", BASE, accuracy=0.982, experiments=[
        {"name": "block4", "executor": None,
         "revs": [state("1ac6459f", "block4", {**BASE, "freeze": "block4"}, accuracy=0.976, shipped="head")]},
        {"name": "lr3e-5", "executor": None,
         "revs": [state("2b97b2f8", "lr3e-5", {**BASE, "finetune": {"learning_rate": 3e-05, "runs": 3}},
                        accuracy=0.98)]},
    ]),
]


def test_rows_name_each_experiment_with_what_it_changed_and_its_headline():
    table = compare.rows(SHOWN)
    assert [r.name for r in table] == ["workspace", "main", "  block4", "  lr3e-5"]
    assert [r.changed for r in table] == ["", "", "freeze=block4", "finetune.learning_rate=3e-05"]
    block4 = table[2].figures
    assert block4[0] == "0.9760" and block4[5] == "head" and block4[6] == "60.9"


def test_a_missing_metric_shows_a_dash():
    shown = [state("abc1234def", "main", BASE)]  # a baseline with no metrics yet
    assert set(compare.rows(shown)[0].figures) == {"-"}


def test_render_fits_the_width_and_wraps_long_changes():
    wide = {**BASE, **{f"extra_{i}": i for i in range(40)}}
    shown = [state("abc1234def", "main", BASE, accuracy=0.9,
                   experiments=[{"name": "a-rather-long-experiment-name-here", "revs": [
                       state("1", "x", wide, accuracy=0.91)]}])]
    text = compare.render(compare.rows(shown), width=160)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 160
    assert "test acc" in lines[0] and "…" not in text
    assert "extra_39=39" in text.replace("\n", " ") or "extra_39=39" in text  # wrapped, never cut
    assert sum("extra_" in line for line in lines) > 1


def test_a_width_too_small_names_the_width_that_fits():
    with pytest.raises(TlpipeError, match="--width"):
        compare.render(compare.rows(SHOWN), width=60)


def test_outside_a_dvc_repository_the_error_says_what_failed(in_tmp_cwd):
    with pytest.raises(TlpipeError, match="dvc exp show --json"):
        compare.exp_show()


def test_a_multi_label_run_shows_its_mean_average_precision_where_accuracy_would_be():
    shown = [state("abc1234def", "main", BASE, accuracy=0.9)]
    shown[0]["data"]["metrics"]["metrics/eval.json"]["data"] = {
        "average_precision_macro": 0.9385, "f1_macro": 0.8357, "log_loss": 0.38, "head_average_precision_macro": 0.93}
    figures = compare.rows(shown)[0].figures
    assert figures[:4] == ("0.9385", "0.8357", "0.3800", "0.9300")
