"""The whole pipeline in a real temporary git+DVC repository: synthetic images,
a random-weight backbone, tiny sizes. One repo is shared by the tests of this
module (in order), since every `dvc repro` starts TensorFlow per stage."""

import copy
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from conftest import COLOURS, DvcRepo, draw_image, make_class_folders, new_dvc_repo, set_dotted, tiny_params

STAGES = ["params", "fetch", "split", "extract", "train_head", "finetune", "trust", "evaluate", "export", "audit", "scratch"]


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, request):
    import yaml

    from conftest import REPO

    root = tmp_path_factory.mktemp("pipeline")
    source = make_class_folders(root / "images", per_class=10, classes=("red", "green", "blue"))
    # A Latin-1 file name (bytes that are not UTF-8), as old archives and systems write them: DVC
    # cannot hash such a name, so fetch must keep it out of data/raw, and the run goes on.
    draw_image(COLOURS["red"], 99_999).save(os.fsencode(source / "red") + b"/caf\xe9.jpg", "JPEG")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    repo = new_dvc_repo(root / "repo", tiny_params(raw, source))
    result = repo.dvc("repro")
    repo.first_run, repo.first_run_stderr = result.stdout, result.stderr
    repo.commit("first run")
    return repo


def test_full_repro_writes_every_output(repo):
    assert ran(repo.first_run) == STAGES
    root = repo.root
    for path in ("data/raw/red", "data/split/train.csv", "data/features/train.npy", "data/prefix/train.npy",
                 "data/prefix/test.npy", "data/prefix/val_mirror.npy",
                 "models/head.keras",
                 "models/model.keras", "models/export/model_tflite_int8.tflite", "models/export/model_onnx.onnx",
                 "models/export/classes.json", "models/export/trust.json", "models/trust/trust.json",
                 "models/trust/train_features.npy", "plots/evaluate/confusion.png", "plots/evaluate/mistakes.png",
                 "plots/evaluate/per_class_f1.png", "plots/audit/duplicates.csv", "plots/audit/label_issues.png",
                 "dvclive/head/plots/metrics/train/loss.tsv", "dvclive/finetune/plots/metrics/val/accuracy.tsv"):
        assert (root / path).exists(), path
    ev = json.loads((root / "reports/eval.json").read_text())
    ft = json.loads((root / "reports/finetune.json").read_text())
    # calibration: a temperature fitted on val, stored in the shipped model, reported on test
    assert ev["calibration"]["temperature"] == ft["temperature"] > 0
    assert {"ece_before", "ece_after"} <= set(ev["calibration"]) and "val_ece_calibrated" in ft
    assert (root / "plots/evaluate/reliability/calibrated.csv").is_file()
    for model in ("finetuned", "head"):
        assert 0 <= ev[model]["accuracy"] <= 1
        assert set(ev[model]["per_class"]) == {"blue", "green", "red"}
    assert "frozen_prefix_cached" in json.loads((root / "reports/finetune.json").read_text())
    assert json.loads((root / "reports/scratch.json").read_text()) == {"enabled": False}
    assert repo.dvc("status").stdout.strip().endswith("Data and pipelines are up to date.")
    rejected = (root / "data/split/rejected.csv").read_text()
    assert "red/caf\\xe9.jpg" in rejected and "not valid UTF-8" in rejected


def test_a_run_shows_tlpipes_lines_and_none_of_tensorflows_start_up_log(repo):
    """Every stage in a user's plain shell (no TF_CPP_MIN_LOG_LEVEL): progress and
    results, and no line of TensorFlow's C++ log (I0000/W0000/E0000, absl's banner)."""
    from tlpipe import quiet

    lines = (repo.first_run + repo.first_run_stderr).splitlines()
    assert [line for line in lines if quiet.is_tensorflow_log(line)] == []
    assert not any(marker in line for line in lines for marker in ("I0000 ", "W0000 ", "E0000 ", "absl::"))
    for stage in ("extract", "train_head", "finetune", "trust", "evaluate", "export", "audit"):
        assert any(line.startswith(f"{stage}: done in") for line in lines), stage
    assert any(line.startswith("finetune: shipped the") for line in lines)


def test_a_deleted_corrections_file_stops_the_pipeline_before_split_removes_anything(repo):
    """DVC stops at the first stage (params depends on the file) naming it;
    data/split is kept; restoring the file reruns nothing but the check."""
    corrections = repo.root / "data" / "corrections.csv"
    kept = corrections.read_bytes()
    before = sorted(p.name for p in (repo.root / "data" / "split").iterdir())
    corrections.unlink()
    try:
        failed = repo.dvc("repro", check=False)
        assert failed.returncode != 0 and "data/corrections.csv" in failed.stderr + failed.stdout
        assert ran(failed.stdout) == [] and sorted(p.name for p in (repo.root / "data" / "split").iterdir()) == before
        assert (repo.root / "data" / "params.ok").is_file()  # nothing at all removed
    finally:
        corrections.write_bytes(kept)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


def test_a_fresh_clone_is_up_to_date_after_dvc_pull(repo, tmp_path):
    """A collaborator's round trip: push to a (local) remote, `git clone`, `dvc pull`."""
    repo.dvc("remote", "add", "-d", "store", str(tmp_path / "remote"))
    repo.commit("remote")
    repo.dvc("push")
    clone = DvcRepo(tmp_path / "clone")
    repo.run("git", "clone", "-q", str(repo.root), str(clone.root))
    clone.dvc("pull")
    assert clone.dvc("status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert ran(clone.dvc("repro").stdout) == []


@pytest.mark.parametrize("stage", ["extract", "train_head", "finetune"])
def test_rerunning_a_stage_on_the_same_inputs_invalidates_nothing(repo, stage):
    """Same inputs give byte-identical outputs (no timings, save dates or object
    ids in features and models), so a forced rerun leaves every later stage valid."""
    result = repo.dvc("repro", "--force", "--single-item", stage)
    assert ran(result.stdout) == [stage]
    assert repo.dvc("status").stdout.strip().endswith("Data and pipelines are up to date.")


# What changing one key touches directly; downstream stages follow through their
# data dependencies (the table in docs/pipeline.md).
DIRECT = [
    ("data.source", "elsewhere", {"fetch"}),
    ("split.val_fraction", 0.3, {"split"}),
    ("seed", 7, {"split", "extract", "train_head", "finetune", "export", "audit", "scratch"}),
    ("backbone", "mobilenet_0.5", {"extract", "finetune"}),
    ("image_size", 40, {"extract", "finetune", "scratch"}),
    ("extract.batch_size", 4, {"extract"}),
    ("head.dropout", 0.3, {"train_head"}),
    ("freeze", "block4", {"extract", "finetune"}),
    ("finetune.learning_rate", 0.01, {"finetune"}),
    ("evaluate.gallery", 2, {"evaluate"}),
    ("audit.folds", 3, {"audit"}),
    ("export.max_accuracy_drop", 0.5, {"export"}),
    ("trust.neighbours", 3, {"trust"}),
    ("evaluate.batch_size", 8, {"evaluate", "trust"}),
    ("evaluate.top_k", 3, {"evaluate", "scratch"}),
    ("scratch.enabled", True, {"scratch"}),
]


@pytest.mark.parametrize("key, value, stages", DIRECT, ids=[k for k, _, _ in DIRECT])
def test_a_params_change_touches_only_the_stages_that_read_it(repo, key, value, stages):
    original = repo.params()
    changed = copy.deepcopy(original)
    set_dotted(changed, key, value)
    repo.write_params(changed)
    try:
        status = json.loads(repo.dvc("status", "--json").stdout)
    finally:
        repo.write_params(original)
    # 'params' checks every change of params.yaml, in a fraction of a second
    assert {name.split(":")[-1] for name in status} == stages | {"params"}


def test_an_image_changed_under_its_own_name_reruns_every_stage_after_split(repo):
    """Only split depends on data/raw; the stages after it depend on data/split,
    whose images.sha256 changes with any image's bytes, name and label unchanged."""
    if shutil.which("sha256sum"):  # the docs' check, typed as a user types it
        check = subprocess.run("cd data/raw && sha256sum -c ../split/images.sha256", shell=True, cwd=repo.root,
                               capture_output=True, text=True)
        assert check.returncode == 0 and "red/red_000.jpg: OK" in check.stdout, check.stdout + check.stderr
    image = repo.root.parent / "images" / "red" / "red_000.jpg"
    original = image.read_bytes()
    try:
        draw_image(COLOURS["red"], 12_345).save(image, "JPEG")
        repo.dvc("repro", "--force", "--single-item", "fetch")
        repo.dvc("repro", "--single-item", "split")
        status = json.loads(repo.dvc("status", "--json").stdout)
    finally:
        image.write_bytes(original)
        repo.dvc("repro", "--force", "--single-item", "fetch")
        repo.dvc("repro", "--single-item", "split")
    assert {name.split(":")[-1] for name in status} == {"extract", "finetune", "trust", "evaluate", "export", "audit",
                                                         "scratch"}
    assert repo.dvc("status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_exp_run_finetune_param_reuses_the_stored_prefix(repo):
    """The docs' `dvc exp run -S key=value`, typed as a user types it, with a
    value DVC writes as 3e-05 (a string to plain PyYAML)."""
    original = repo.params()
    result = repo.dvc("exp", "run", "-n", "lr", "-S", "finetune.learning_rate=0.00003")
    # evaluate follows only if the shipped model changed (the head may still win on val)
    assert ran(result.stdout) in (["params", "finetune"], ["params", "finetune", "trust", "evaluate", "export"])
    assert "learning_rate: 3e-05" in (repo.root / "params.yaml").read_text()
    ft = json.loads((repo.root / "reports/finetune.json").read_text())
    assert ft["frozen_prefix_cached"] is True and ft["prefix_seconds"] < 2
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}  # back to the committed run, from the run-cache


@pytest.mark.heavy  # three experiments: over a minute (make test-heavy)
def test_exp_run_head_and_pooling_choices(repo):
    """The docs' `dvc exp run -S head.l2=0.001`, `-S pooling=avg` and
    `-S head.solver=keras -S pooling=avg`, typed as a user types them."""
    original = repo.params()
    head = json.loads((repo.root / "reports/head.json").read_text())  # the default: grid, L2 cross-validated
    assert head["solver"] == "lbfgs" and head["l2_chosen_by"].endswith("cross-validation over train + val")
    assert len(head["l2_cv_loss"]) >= 3 and isinstance(head["reads_grid"], bool)
    result = repo.dvc("exp", "run", "-n", "l2", "-S", "head.l2=0.001")
    assert ran(result.stdout)[:2] == ["params", "train_head"]
    head = json.loads((repo.root / "reports/head.json").read_text())
    assert head["l2"] == 0.001 and head["l2_chosen_by"] == "params" and head["l2_cv_loss"] == {}
    result = repo.dvc("exp", "run", "-n", "avg", "-S", "pooling=avg")
    assert ran(result.stdout)[:3] == ["params", "extract", "train_head"]
    meta = json.loads((repo.root / "data/features/meta.json").read_text())
    assert meta["pooling"] == "avg" and meta["feature_dim"] == meta["average_columns"] == 256
    assert "reads_grid" not in json.loads((repo.root / "reports/head.json").read_text())
    repo.dvc("exp", "run", "-n", "keras", "-S", "head.solver=keras", "-S", "pooling=avg")
    assert json.loads((repo.root / "reports/head.json").read_text())["solver"] == "keras"
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


def test_exp_run_one_longer_run_or_early_stopping(repo):
    """The docs' `dvc exp run -S finetune.runs=1 -S finetune.epochs=10` and
    `dvc exp run -S finetune.patience=3`, typed as a user types them."""
    original = repo.params()
    result = repo.dvc("exp", "run", "-n", "one-run", "-S", "finetune.runs=1", "-S", "finetune.epochs=10")  # the docs
    assert ran(result.stdout)[:2] == ["params", "finetune"]
    ft = json.loads((repo.root / "reports/finetune.json").read_text())
    assert ft["runs"] == 1 and ft["epochs_run"] == 10 and ft["kept_epochs"] == [10]  # patience 0: the last epoch
    repo.dvc("exp", "run", "-n", "patience", "-S", "finetune.patience=3")  # the docs
    ft = json.loads((repo.root / "reports/finetune.json").read_text())
    logged = (repo.root / "dvclive/finetune/plots/metrics/val/loss.tsv").read_text().splitlines()[1:]
    losses = [float(line.split("\t")[1]) for line in logged]
    assert ft["epochs_run"] == len(losses) <= 10
    assert ft["kept_epochs"] == [int(np.argmin(losses)) + 1]  # early stopping keeps the best epoch
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


def test_exp_run_tta_off_ships_the_plain_model(repo):
    """The docs' `dvc exp run -S finetune.tta=false`, typed as a user types it."""
    from tlpipe.layers import load_model

    original = repo.params()
    result = repo.dvc("exp", "run", "-n", "plain", "-S", "finetune.tta=false")
    assert ran(result.stdout)[:2] == ["params", "finetune"]
    assert "tta: false" in (repo.root / "params.yaml").read_text()
    ft = json.loads((repo.root / "reports/finetune.json").read_text())
    assert ft["tta"] is False and "val_loss_with_tta" not in ft
    assert "mirror" not in [layer.name for layer in load_model(repo.root / "models/model.keras").layers]
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


@pytest.mark.heavy  # finetune, trust, evaluate and export rerun: the default suite's slowest (make test-heavy)
def test_exp_run_tta_on_ships_the_mirror_average_scored_on_stored_outputs(repo):
    """The docs' `dvc exp run -S finetune.tta=true` (bench/scaling.py's
    experiment that changes the shipped model), typed as a user types it: the
    stages that score the new model rerun; trust reads val's stored prefix and
    its mirror images', evaluate test's, rather than the images."""
    from tlpipe.layers import load_model

    original = repo.params()
    result = repo.dvc("exp", "run", "-n", "mirror", "-S", "finetune.tta=true")
    assert ran(result.stdout) == ["params", "finetune", "trust", "evaluate", "export"]
    assert "trust: val from data/prefix" in result.stdout
    assert "evaluate: test from data/prefix" in result.stdout
    assert json.loads((repo.root / "reports/finetune.json").read_text())["tta"] is True
    assert "mirror" in [layer.name for layer in load_model(repo.root / "models/model.keras").layers]
    assert json.loads((repo.root / "models/trust/trust.json").read_text())["val_images"] > 0
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


def test_exp_run_export_formats_scores_each_in_its_runtime_and_metrics_diff_shows_it(repo):
    """The docs' `dvc exp run -S 'export.formats=[...]'`, typed as a user types it."""
    original = repo.params()
    result = repo.dvc("exp", "run", "-n", "formats", "-S", "export.formats=[tflite_float16,saved_model]")  # the docs
    assert ran(result.stdout) == ["params", "export"]
    assert "tflite_float16" in result.stdout and "one thread, batch 1" in result.stdout
    written = json.loads((repo.root / "reports/export.json").read_text())
    assert set(written) == {"keras", "saved_model", "tflite_float16", "shipped"}
    assert written["saved_model"]["agreement"] == 1.0
    assert sorted(f.name for f in (repo.root / "models/export").iterdir()) == [
        "checksums.json", "classes.json", "model_saved_model", "model_tflite_float16.tflite", "trust.json"]
    diff = json.loads(repo.dvc("metrics", "diff", "--json").stdout)["metrics/export.json"]
    assert {"tflite_float16_accuracy_drop", "onnx_accuracy_drop"} <= set(diff)  # new and gone, side by side
    top = repo.dvc("exp", "run", "-n", "none", "-S", "export.formats=[]")
    assert ran(top.stdout) == ["params", "export"] and "nothing exported" in top.stdout
    assert json.loads((repo.root / "metrics/export.json").read_text()) == {}
    assert json.loads((repo.root / "reports/export.json").read_text()) == {}
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


def test_compare_shows_the_experiments_on_one_screen(repo):
    """The README's `tlpipe compare` after the experiments above: every one by
    name with the params it changed and its test accuracy, within 160 columns."""
    out = repo.run("tlpipe", "compare").stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 160 and "…" not in out
    assert "test acc" in lines[0]
    for name in ("workspace", "formats", "none"):
        assert any(line.split()[0] == name for line in lines if line.strip()), name
    assert "export.formats=[]" in out
    formats = next(line for line in lines if line.split() and line.split()[0] == "formats")
    accuracy = json.loads((repo.root / "metrics/eval.json").read_text())["accuracy"]
    assert f"{accuracy:.4f}" in formats


@pytest.mark.heavy  # trust, evaluate and export rerun (make test-heavy)
def test_exp_run_trust_coverage_recalibrates_the_sets_only(repo):
    """The docs' `dvc exp run -S trust.coverage=0.8`, typed as a user types it."""
    original = repo.params()
    result = repo.dvc("exp", "run", "-n", "coverage", "-S", "trust.coverage=0.8")
    assert ran(result.stdout)[:3] == ["params", "trust", "evaluate"]  # export follows: trust.json travels with it
    assert json.loads((repo.root / "models/trust/trust.json").read_text())["coverage"] == 0.8
    ev = json.loads((repo.root / "reports/eval.json").read_text())
    assert ev["conformal"]["target_coverage"] == 0.8 and ev["conformal"]["mean_set_size"] >= 1
    assert 0 <= ev["unfamiliar"]["test_rate"] <= 1
    assert json.loads((repo.root / "models/export/trust.json").read_text())["coverage"] == 0.8
    repo.write_params(original)
    assert set(ran(repo.dvc("repro").stdout)) <= {"params"}


@pytest.mark.heavy  # two experiments through extract: over a minute (make test-heavy)
def test_exp_run_freeze_recomputes_only_the_prefix_then_reuses_it(repo):
    result = repo.dvc("exp", "run", "-n", "block4", "-S", "freeze=block4")
    # extract writes the new prefix; the pooled features are unchanged, so the head is kept
    assert ran(result.stdout) == ["params", "extract", "finetune", "trust", "evaluate", "export"]
    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    assert "block4" in json.dumps(shown)
    assert json.loads((repo.root / "reports/finetune.json").read_text())["freeze"] == "block4"
    diff = json.loads(repo.dvc("metrics", "diff", "--json").stdout)["metrics/finetune.json"]
    assert diff and set(diff) <= {"shipped", "tta", "val_loss", "fit_seconds"}  # the headline, flat
    compared = repo.run("tlpipe", "compare").stdout  # the README's one-screen comparison
    assert "freeze=block4" in compared and max(len(line) for line in compared.splitlines()) <= 160
    again = repo.dvc("exp", "run", "-S", "freeze=block5")
    assert set(ran(again.stdout)) <= {"params"}  # the rest restored from the run-cache: no prefix computed
    assert "Stage 'extract' is cached" in again.stdout and "Stage 'finetune' is cached" in again.stdout


def test_plots_show_renders_every_plot_offline_in_a_real_browser(repo, tmp_path):
    """`dvc plots show` as a user runs it, the page opened in headless Chromium
    with no network: every declared plot is drawn (Vega's SVG with marks, no
    error), every image loads, and nothing is fetched from a CDN."""
    import re
    import shutil

    from conftest import REPO, render_in_chromium

    if not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    repo.dvc("plots", "show", "-o", "plots_page")
    page = repo.root / "plots_page" / "index.html"
    assert "cdn.jsdelivr.net" not in page.read_text()
    dom = render_in_chromium(page, tmp_path / "profile")
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    vega = [next(iter(p)) for p in declared if isinstance(p, dict)]
    images = [p for p in declared if isinstance(p, str)]
    starts = sorted((dom.index(f'<div id="{re.sub(r"[^A-Za-z0-9-]", "_", t)}"'), t) for t in vega)
    for (begin, title), (end, _) in zip(starts, starts[1:] + [(len(dom), None)]):
        box = dom[begin:end]
        assert "<svg" in box and 'class="mark-' in box, f"{title}: no Vega drawing"
        assert "data-plot-error" not in box and "Plot error" not in box, f"{title}: {box[:300]}"
    shown = [src for src in re.findall(r'<img src="([^"]+)"', dom) if "${" not in src]  # not the inlined JS
    assert len(shown) == len(images)
    for src in shown:  # DVC copies each image beside the page
        assert (page.parent / src).is_file() or src.startswith("data:image/png"), src


def test_plots_show_renders_every_plot(repo):
    repo.dvc("plots", "show", "-o", "plots_html")
    html = (repo.root / "plots_html" / "index.html").read_text()
    for plot_id in ("Confusion matrix (fine-tuned, test)", "ROC (test)", "Head loss",
                    "Fine-tune accuracy", "plots/evaluate/mistakes.png", "plots/audit/label_issues.png"):
        assert plot_id in html, plot_id


def test_metrics_show_is_the_headline_and_the_rest_is_in_reports(repo):
    """`dvc metrics show` holds the few flat numbers people compare
    (tlpipe.headline; this repo exports two formats); the rest is in reports/."""
    from test_headline import PINNED

    (workspace,) = json.loads(repo.dvc("metrics", "show", "--json").stdout).values()  # keyed "" or "workspace"
    shown = workspace["data"]
    keys = {f"{path}:{key}" for path, entry in shown.items() for key in entry["data"]}
    formats = {"metrics/export.json:tflite_int8_accuracy_drop", "metrics/export.json:onnx_accuracy_drop"}
    assert keys == {k for k in PINNED if not k.startswith("metrics/export.json:")} | formats
    for entry in shown.values():
        assert all(not isinstance(v, (dict, list)) for v in entry["data"].values())  # flat
    assert json.loads((repo.root / "reports/eval.json").read_text())["head"]["per_class"]["red"]["f1"] >= 0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("evaluate.top_k", 1, "The 'evaluate.top_k' parameter must be an int in the range [2, 100]. Got 1"),
        ("export.formats", ["onnx", "coreml"], "The 'export.formats' parameter must be a list of distinct formats "
                                               "among saved_model, tflite, tflite_float16, tflite_int8, onnx"),
        ("freeze", "block0", "an exact Keras layer name of the backbone. Got 'block0' instead."),
        ("freeze", "conv_pw_99", "Got 'conv_pw_99' instead. (backbone 'mobilenet_0.25' has no such layer"),
    ],
)
def test_bad_param_stops_before_any_stage_and_loses_nothing(repo, key, value, message):
    """DVC removes a stage's outputs before running it: the 'params' stage
    stops a bad value first, so every earlier result stays in place."""
    import hashlib

    def snapshot():
        files = [p for p in sorted(repo.root.glob("*/**/*")) if p.is_file() and ".git" not in p.parts
                 and ".dvc" not in p.parts and "plots_page" not in p.parts]
        return {p.relative_to(repo.root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files
                if p.name != "params.yaml"}

    before = snapshot()
    original = repo.params()
    bad = copy.deepcopy(original)
    set_dotted(bad, key, value)
    repo.write_params(bad)
    try:
        result = repo.dvc("repro", check=False)
    finally:
        repo.write_params(original)
    assert result.returncode != 0
    assert f"params: error: params.yaml: The '{key}' parameter must be " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert ran(result.stdout) == ["params"]
    after = snapshot()
    assert {k: v for k, v in after.items() if k != "data/params.ok"} == {
        k: v for k, v in before.items() if k != "data/params.ok"
    }
    assert "models/model.keras" in after and "plots/evaluate/confusion.png" in after and "data/features/train.npy" in after
