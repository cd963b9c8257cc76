"""`tlpipe predict` and `tlpipe export` on a small model trained by the pipeline's
own code (synthetic images, random-weight backbone)."""

import csv
import io
import json
import subprocess
import sys

import pytest

from tlpipe import artifacts, cli, evaluate, params, paths

from conftest import COLOURS, draw_image, make_class_folders, run_stage_code, tiny_params, tool_env, working_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, raw_params_module):
    root = tmp_path_factory.mktemp("cli")
    with working_dir(root):
        make_class_folders(paths.RAW, per_class=8)
        p = params.parse(tiny_params(raw_params_module, paths.RAW, backbone="resnet50", freeze="block5"))
        run_stage_code(p, "split", "extract", "train_head", "finetune", "trust")
        yield root


@pytest.fixture(scope="module")
def raw_params_module():
    import yaml

    from conftest import REPO

    return yaml.safe_load((REPO / "params.yaml").read_text())


def run_cli(root, *args):
    return subprocess.run(
        [sys.executable, "-m", "tlpipe", *args], cwd=root, env=tool_env(), capture_output=True, text=True
    )


def test_predict_folder_with_good_and_broken_images(trained, tmp_path):
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    draw_image(COLOURS["red"], 1).save(folder / "red one.jpg")
    draw_image(COLOURS["blue"], 2).convert("RGBA").save(folder / "nested" / "blue.png")
    (folder / "broken.jpg").write_text("not an image")
    (folder / ".hidden.jpg").write_text("skipped")
    result = run_cli(trained, "predict", str(folder), str(tmp_path / "missing.jpg"))
    assert result.returncode == 1, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"broken.jpg", "blue.png", "red one.jpg", "missing.jpg"}
    assert by_name["broken.jpg"]["error"].startswith("not an image")
    assert by_name["missing.jpg"]["error"] == "no such file"
    for name in ("blue.png", "red one.jpg"):
        row = by_name[name]
        assert row["error"] == "" and row["predicted"] in ("red", "blue")
        assert 0.5 <= float(row["probability"]) <= 1.0
        assert row["top_k"].startswith(row["predicted"] + ":")
    assert "2 of 4 files could not be read" in result.stderr


def test_predict_matches_evaluate_and_writes_jsonl(trained, tmp_path):
    from tlpipe.layers import load_model

    rows = artifacts.read_split("test", trained / paths.SPLIT)
    files = [str(trained / paths.RAW / r.path) for r in rows]
    out = tmp_path / "p.jsonl"
    result = run_cli(trained, "predict", *files, "--format", "jsonl", "--out", str(out), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    import os

    old = os.getcwd()
    os.chdir(trained)
    try:
        probs = evaluate.predict_images(load_model(paths.MODEL), rows, 8)
    finally:
        os.chdir(old)
    classes = json.loads((trained / paths.CLASSES).read_text())
    for line, p in zip(lines, probs):
        assert line["predicted"] == classes[int(p.argmax())]
        assert abs(line["probability"] - float(p.max())) < 1e-4
        assert len(line["top_k"]) == 2
        assert line["predicted"] in line["prediction_set"] and line["unsure"] is (len(line["prediction_set"]) != 1)
        assert isinstance(line["unfamiliar"], bool) and line["unfamiliar_score"] >= 0


@pytest.fixture(scope="module")
def keras_predictions(trained):
    files = [str(trained / paths.RAW / r.path) for r in artifacts.read_split("test", trained / paths.SPLIT)]
    result = run_cli(trained, "predict", *files)
    assert result.returncode == 0, result.stderr
    return files, list(csv.DictReader(io.StringIO(result.stdout)))


@pytest.mark.heavy  # three exports and their runtimes: over a minute (make test-heavy)
@pytest.mark.parametrize("fmt, name", [("tflite_int8", "model_tflite_int8.tflite"),
                                       ("saved_model", "model_saved_model"),
                                       ("onnx", "model_onnx.onnx")])  # the docs' `tlpipe export --format onnx`
def test_export_then_predict_with_the_exported_file(trained, keras_predictions, tmp_path, fmt, name):
    """`tlpipe export --format F` scores the artifact on test in its own runtime;
    `tlpipe predict --model` then runs the very file, class list found beside it."""
    result = run_cli(trained, "export", "--format", fmt, "--out", str(tmp_path / name), "--max-accuracy-drop", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {tmp_path / name}" in result.stdout and "same top class" in result.stdout
    assert result.stdout.rstrip().endswith("export: OK")
    assert json.loads((tmp_path / "classes.json").read_text()) == json.loads((trained / paths.CLASSES).read_text())
    files, keras_rows = keras_predictions
    ours = run_cli(trained, "predict", "--model", str(tmp_path / name), *files)
    assert ours.returncode == 0, ours.stderr
    ours_rows = list(csv.DictReader(io.StringIO(ours.stdout)))
    agree = sum(a["predicted"] == b["predicted"] for a, b in zip(ours_rows, keras_rows))
    assert len(ours_rows) == len(files) and agree >= (len(files) - 1 if fmt == "tflite_int8" else len(files))
    # the prediction sets travel with the artifact; the unfamiliar score needs the Keras model's features
    assert (tmp_path / "trust.json").is_file()
    assert all(r["prediction_set"] and r["unsure"] in ("true", "false") and r["unfamiliar"] == "" for r in ours_rows)
    assert all(r["unfamiliar"] in ("true", "false") and float(r["unfamiliar_score"]) >= 0 for r in keras_rows)


def test_usage_errors_are_one_line(trained, tmp_path):
    result = run_cli(tmp_path, "predict", "x.jpg")
    assert result.returncode == 2
    assert "tlpipe predict: error: No model at models/model.keras" in result.stderr
    result = run_cli(trained, "export", "--format", "onnx", "--model", str(tmp_path / "m.onnx"))
    assert result.returncode == 2 and f"No model at {tmp_path / 'm.onnx'}" in result.stderr


def one_line_error(result, command="predict"):
    """Exit status 2, one line on stderr after TensorFlow's start-up noise, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith(f"tlpipe {command}: error: ")]
    return line


def test_predict_on_an_empty_folder_is_an_error(trained, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    line = one_line_error(run_cli(trained, "predict", str(tmp_path / "empty")))
    assert f"No image file in {tmp_path / 'empty'}" in line and ".jpg" in line


def test_corrupt_model_file_is_a_one_line_error(trained, tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    image = trained / paths.RAW / artifacts.read_split("test", trained / paths.SPLIT)[0].path
    line = one_line_error(run_cli(trained, "predict", "--model", str(bad), str(image)))
    assert f"{bad}: not a readable .keras file" in line and "tlpipe export" in line


def test_class_list_that_does_not_match_the_model_is_refused(trained, tmp_path):
    image = trained / paths.RAW / artifacts.read_split("test", trained / paths.SPLIT)[0].path
    three = tmp_path / "classes.json"
    three.write_text('["red", "blue", "green"]')
    line = one_line_error(run_cli(trained, "predict", "--classes", str(three), str(image)))
    assert "lists 3 classes but models/model.keras predicts 2" in line
    three.write_text('{"red": 0}')
    assert "must hold a JSON list of class names" in one_line_error(
        run_cli(trained, "predict", "--classes", str(three), str(image))
    )


@pytest.mark.parametrize("fmt", ["keras", "saved_model"])  # Python's file I/O, TensorFlow's
def test_export_to_an_unwritable_place_is_a_one_line_error(trained, tmp_path, fmt):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root ignores permissions; a file in the path stops anyone
    out = blocker / "inside" / "export.out"
    line = one_line_error(run_cli(trained, "export", "--format", fmt, "--out", str(out)), "export")
    assert f"Cannot write the export to {out}" in line and "--out PATH" in line


def test_help_is_complete():
    text = cli.parser().format_help()
    assert "predict" in text and "export" in text
    sub = run_cli(".", "predict", "--help").stdout
    for flag in ("--model", "--classes", "--out", "--format", "--top-k", "--batch-size"):
        assert flag in sub
