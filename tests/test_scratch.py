"""The opt-in from-scratch baseline."""

import json

from tlpipe import params, paths

from conftest import make_class_folders, run_stage_code, tiny_params


def test_disabled_records_only_that(in_tmp_cwd, raw_params):
    p = params.parse(tiny_params(raw_params, "unused"))
    assert run_stage_code(p, "scratch") == {"enabled": False}
    assert json.loads(paths.SCRATCH_REPORT.read_text()) == {"enabled": False}
    assert (paths.SCRATCH_LOGS / "plots/metrics/val/accuracy.tsv").read_text() == "step\taccuracy\n"


def test_enabled_trains_and_scores_the_test_split(in_tmp_cwd, raw_params):
    make_class_folders(paths.RAW, per_class=12)
    raw = tiny_params(raw_params, paths.RAW)
    raw["scratch"].update({"enabled": True, "epochs": 3, "batch_size": 8})
    p = params.parse(raw)
    metrics = run_stage_code(p, "split", "scratch")
    saved = json.loads(paths.SCRATCH_REPORT.read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["enabled"] and saved["epochs_run"] == 3
    assert set(saved["test"]["per_class"]) == {"blue", "red"}
    assert (paths.SCRATCH_LOGS / "plots/metrics/val/accuracy.tsv").is_file()
