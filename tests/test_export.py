"""The export stage on a small model trained by the pipeline's own code
(synthetic images, random-weight backbone): every format written, each one
scored on the test split by its own runtime."""

import dataclasses
import json
import os

import numpy as np
import pytest

from tlpipe import artifacts, export, params, paths, runtimes
from tlpipe.errors import TlpipeError

from conftest import make_class_folders, run_stage_code, tiny_params, working_dir

# Five conversions and six runtimes: `make test-heavy` (.ci/run runs it after the
# default suite); the default suite still runs two formats through DVC.
pytestmark = pytest.mark.heavy

FLOAT_FORMATS = ("saved_model", "tflite_float16", "onnx")  # the Keras model's own function, in float


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model shipped with mirror-image TTA (the mirror and the temperature must
    travel into every artifact), exported in all five formats."""
    import yaml

    from conftest import REPO

    root = tmp_path_factory.mktemp("export")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with working_dir(root):
        make_class_folders(paths.RAW, per_class=8)
        p = params.parse(tiny_params(raw, paths.RAW))
        p = p.with_overrides(
            finetune=dataclasses.replace(p.finetune, tta=True),
            export=dataclasses.replace(p.export, formats=params.EXPORT_FORMATS, max_accuracy_drop=1.0),
        )
        run_stage_code(p, "split", "extract", "train_head", "finetune", "trust")
        metrics = run_stage_code(p, "export")
        yield root, p, metrics


def test_every_format_is_written_with_the_class_names_beside_it(exported):
    root, _, _ = exported
    folder = root / paths.EXPORT
    names = {"model_saved_model", "model_tflite.tflite", "model_tflite_float16.tflite", "model_tflite_int8.tflite",
             "model_onnx.onnx", "classes.json", "trust.json", "checksums.json"}
    assert {f.name for f in folder.iterdir()} == names
    assert json.loads((folder / "classes.json").read_text()) == json.loads((root / paths.CLASSES).read_text())
    assert (folder / "model_saved_model" / "saved_model.pb").is_file()


def test_each_format_is_scored_on_test_in_its_own_runtime(exported):
    root, _, metrics = exported
    on_disk = json.loads((root / paths.EXPORT_REPORT).read_text())
    assert on_disk == metrics
    n_test = len(artifacts.read_split("test", root / paths.SPLIT))
    assert metrics["shipped"]["test_images"] == n_test
    assert metrics["shipped"]["latency_images"] == min(export.LATENCY_CALLS, n_test)
    assert metrics["shipped"]["mirror_average"] is True and metrics["shipped"]["temperature"] > 0
    for fmt in params.EXPORT_FORMATS:
        r = metrics[fmt]
        assert {"accuracy", "f1_macro", "agreement", "bytes", "ms_per_image", "accuracy_drop"} <= set(r), fmt
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["agreement"] <= 1 and r["ms_per_image"] > 0
        assert r["bytes"] == export.size_bytes(export.artifact_path(fmt, root / paths.EXPORT))
        assert r["accuracy_drop"] == round(metrics["keras"]["accuracy"] - r["accuracy"], 4)
    # Float artifacts compute the Keras model's function, mirror average and
    # temperature included: the same decisions, probabilities within rounding.
    for fmt in FLOAT_FORMATS:
        assert metrics[fmt]["agreement"] == 1.0, fmt
        assert metrics[fmt]["max_probability_difference"] < 1e-3, fmt
    int8 = runtimes.open_model(export.artifact_path("tflite_int8", root / paths.EXPORT))
    assert int8.keep.get_input_details()[0]["dtype"] == np.uint8  # integers end to end, as Edge TPU wants
    assert int8.keep.get_output_details()[0]["dtype"] == np.uint8


def test_the_runtimes_reproduce_the_keras_models_probabilities(exported):
    root, _, _ = exported
    with working_dir(root):
        rows = artifacts.read_split("test")[:4]
        keras_model = runtimes.open_model(paths.MODEL)
        x = np.concatenate(list(export.pixel_batches(rows, keras_model.image_size)))
        expected = keras_model(x)
        assert np.allclose(expected.sum(axis=1), 1, atol=1e-5)
        for fmt in params.EXPORT_FORMATS:
            got = runtimes.open_model(export.artifact_path(fmt), threads=1)(x)  # a batch of 4, resized inputs
            assert got.shape == expected.shape, fmt
            tolerance = 1e-3 if fmt in FLOAT_FORMATS else 0.1
            assert np.abs(got - expected).max() < tolerance, fmt


def test_scoring_in_batches_gives_the_decisions_of_one_image_at_a_time(exported, monkeypatch):
    """Batches that do not divide the test images: every image is scored once, as at batch 1."""
    root, _, _ = exported
    with working_dir(root):
        rows, classes = artifacts.read_split("test"), artifacts.read_classes()
        opened = {"keras": runtimes.open_model(paths.MODEL, threads=1),
                  "tflite_int8": runtimes.open_model(export.artifact_path("tflite_int8"), threads=1)}
        scored = {}
        for batch in (1, 3):
            monkeypatch.setattr(export, "SCORING_BATCH", batch)
            scored[batch] = export.score_runtimes(opened, rows, classes)
    assert len(rows) % 3 != 0
    for fmt in opened:
        for figure in ("accuracy", "f1_macro", "agreement"):
            assert scored[3][fmt].get(figure) == scored[1][fmt].get(figure), (fmt, figure)
        assert scored[3][fmt]["ms_per_image"] > 0


def test_tensorflows_runtimes_share_a_lane_and_the_others_score_beside_them():
    opened = {name: runtimes.Runtime(kind, 8, 2, forward=np.asarray) for name, kind in
              (("keras", "keras"), ("saved_model", "saved_model"), ("tflite_int8", "tflite"), ("onnx", "onnx"))}
    assert export.scoring_lanes(opened, cores=2) == [["keras", "saved_model"], ["tflite_int8", "onnx"]]
    assert export.scoring_lanes(opened, cores=16) == [["keras", "saved_model"], ["tflite_int8", "onnx"]]
    assert export.scoring_lanes(opened, cores=1) == [list(opened)]
    only_tensorflow = {k: opened[k] for k in ("keras", "saved_model")}
    assert export.scoring_lanes(only_tensorflow, cores=2) == [["keras", "saved_model"]]


def test_runtimes_scored_side_by_side_give_the_figures_of_one_after_another(exported):
    root, _, _ = exported
    with working_dir(root):
        rows, classes = artifacts.read_split("test"), artifacts.read_classes()
        opened = {"keras": runtimes.open_model(paths.MODEL, threads=1)}
        opened.update({fmt: runtimes.open_model(export.artifact_path(fmt), threads=1) for fmt in params.EXPORT_FORMATS})
        scored = {cores: export.score_runtimes(opened, rows, classes, cores=cores) for cores in (1, 2)}
    assert len(export.scoring_lanes(opened, cores=2)) == 2
    for fmt in opened:
        assert {k: v for k, v in scored[2][fmt].items() if k != "ms_per_image"} == \
            {k: v for k, v in scored[1][fmt].items() if k != "ms_per_image"}, fmt


def test_tflite_converted_from_the_one_saved_model_is_what_a_fresh_export_gives(exported, tmp_path):
    """The stage exports the SavedModel once and converts every TFLite format
    from it; converting straight from the Keras model gives the same model."""
    from tlpipe.layers import load_model

    root, _, _ = exported
    with working_dir(root):
        rows = artifacts.read_split("test")[:4]
        fresh = tmp_path / "fresh.tflite"
        export.write_artifact(load_model(paths.MODEL), "tflite_float16", fresh)
        staged = runtimes.open_model(export.artifact_path("tflite_float16"), threads=1)
        x = np.concatenate(list(export.pixel_batches(rows, staged.image_size)))
        np.testing.assert_array_equal(runtimes.open_model(fresh, threads=1)(x), staged(x))


def test_a_format_that_loses_accuracy_is_named_with_both_figures():
    results = {"keras": {"accuracy": 0.95}, "onnx": {"accuracy": 0.95}, "tflite_int8": {"accuracy": 0.9}}
    (line,) = export.accuracy_drops(results, 0.01)
    assert line.startswith("tflite_int8 scores 0.9000 test accuracy against the Keras model's 0.9500")
    assert "export.max_accuracy_drop=0.01" in line
    assert export.accuracy_drops(results, 0.05) == []  # a drop of exactly the limit passes


def test_representative_images_are_a_seeded_sample_of_train(exported):
    root, _, _ = exported
    with working_dir(root):
        train = {r.path for r in artifacts.read_split("train")}
        first = export.representative_rows(5, seed=1)
        assert len(first) == 5 and {r.path for r in first} <= train
        assert [r.path for r in export.representative_rows(5, seed=1)] == [r.path for r in first]
        assert len(export.representative_rows(10_000, seed=1)) == len(train)


# The last two rewrite the module's export: they run last.
def test_the_stage_fails_after_writing_metrics_when_a_format_loses_accuracy(exported):
    """A limit of 0 fails as soon as any artifact scores below the Keras model;
    on a model where none does, the stage passes: both outcomes are checked
    against the metrics the stage wrote."""
    root, p, _ = exported
    strict = p.with_overrides(export=dataclasses.replace(p.export, formats=("tflite_int8",), max_accuracy_drop=0.0))
    with working_dir(root):
        try:
            run_stage_code(strict, "export")
            failed = None
        except TlpipeError as err:
            failed = str(err)
        written = json.loads(paths.EXPORT_REPORT.read_text())
        dropped = written["tflite_int8"]["accuracy_drop"] > 0
        assert (failed is not None) == dropped
        if failed:
            assert failed.startswith("tflite_int8 scores") and str(paths.EXPORT_REPORT) in failed


def test_onnx_alone_is_exported_from_a_model_never_called(exported):
    """ONNX with no SavedModel exported before it: the model, loaded from disk,
    has never been called, which Keras' ONNX exporter refused."""
    root, p, _ = exported
    with working_dir(root):
        metrics = run_stage_code(p.with_overrides(export=dataclasses.replace(p.export, formats=("onnx",))), "export")
        assert {f.name for f in paths.EXPORT.iterdir()} == {"model_onnx.onnx", "classes.json", "trust.json",
                                                            "checksums.json"}
    assert metrics["onnx"]["agreement"] == 1.0
    assert metrics["onnx"]["bytes"] == (root / export.artifact_path("onnx")).stat().st_size


def _exported_twice(root, tmp_path, formats: list[str]) -> list[dict]:
    """``formats`` written by two processes, as by two `dvc repro` runs -> each
    run's files (path under its folder: bytes)."""
    import subprocess
    import sys

    from conftest import REPO

    script = ("import sys; from pathlib import Path; from tlpipe import export, paths; "
              "from tlpipe.layers import load_model; "
              f"export.write_artifacts(load_model(paths.MODEL), {formats!r}, Path(sys.argv[1]), None)")
    files = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        subprocess.run([sys.executable, "-c", script, str(tmp_path / run)], cwd=root, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        files.append({str(f.relative_to(tmp_path / run)): f.read_bytes()
                      for f in (tmp_path / run).rglob("*") if f.is_file()})
    return files


def test_one_model_exported_twice_gives_the_same_saved_model_and_tflite_bytes(exported, tmp_path):
    """The order of TensorFlow's watched variables and the SavedModel's random
    UUID differ between two processes, the files do not
    (_variables_in_name_order, _content_derived_uuid)."""
    first, second = _exported_twice(exported[0], tmp_path, ["saved_model", "tflite_float16"])
    assert sorted(first) == sorted(second) == sorted([
        "model_saved_model/saved_model.pb", "model_saved_model/fingerprint.pb",
        "model_saved_model/variables/variables.index", "model_saved_model/variables/variables.data-00000-of-00001",
        "model_tflite_float16.tflite"])
    assert [name for name in first if first[name] != second[name]] == []


def test_one_model_exported_twice_gives_the_same_onnx_bytes(exported, tmp_path):
    """tf2onnx's counters and set orders differ between two processes, the
    file does not (canonical_onnx_names)."""
    first, second = _exported_twice(exported[0], tmp_path, ["onnx"])
    assert first["model_onnx.onnx"] == second["model_onnx.onnx"]


def test_a_keras_without_the_variable_listing_still_exports(monkeypatch):
    """_variables_in_name_order swaps a private Keras function; where a Keras
    release has moved it, exporting goes on with Keras' own order."""
    from keras.src.export import saved_model_export_archive as archive

    monkeypatch.delattr(archive, "_list_variables_used_by_fns")
    with export._variables_in_name_order():
        assert not hasattr(archive, "_list_variables_used_by_fns")


def test_no_formats_writes_only_the_class_list(exported):
    root, p, _ = exported
    with working_dir(root):
        assert run_stage_code(p.with_overrides(export=dataclasses.replace(p.export, formats=())), "export") == {}
        assert [f.name for f in paths.EXPORT.iterdir()] == ["classes.json"]  # no artifact: no trust.json either
        assert json.loads(paths.EXPORT_REPORT.read_text()) == {}
