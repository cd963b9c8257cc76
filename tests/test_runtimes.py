"""Opening a model in its own runtime: what each path means, damaged files,
the integer input and output of a fully quantised TFLite model. (Each runtime
on real exported models: tests/test_export.py and tests/test_cli.py.)"""

import numpy as np
import pytest

from tlpipe import runtimes
from tlpipe.errors import TlpipeError


def test_a_path_names_its_runtime(tmp_path):
    for name, kind in (("m.keras", "keras"), ("m.TFLITE", "tflite"), ("m.onnx", "onnx")):
        (tmp_path / name).write_bytes(b"x")
        assert runtimes.kind_of(tmp_path / name) == kind
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"x")
    assert runtimes.kind_of(tmp_path / "sm") == "saved_model"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.onnx", "No model at"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "unknown model type '.txt'"),
    (lambda p: (p / "folder").mkdir() or p / "folder", "without saved_model.pb: not a SavedModel"),
])
def test_a_path_that_is_no_model_is_named(tmp_path, make, message):
    with pytest.raises(TlpipeError, match=message):
        runtimes.open_model(make(tmp_path))


@pytest.mark.parametrize("name, what", [("m.tflite", "not a TFLite file"), ("m.onnx", "not a valid ONNX model"),
                                        ("m.keras", "not a readable .keras file")])
def test_a_damaged_model_file_is_one_clear_error(tmp_path, name, what):
    """Checked before its runtime reads it (tlpipe.model_files; real exports
    cut and flipped: tests/test_model_files.py)."""
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 truncated, not a model")
    with pytest.raises(TlpipeError) as err:
        runtimes.open_model(path)
    assert str(err.value).startswith(f"{path}: {what}")
    assert "tlpipe export" in str(err.value) and "\n" not in str(err.value)


def test_integer_inputs_and_outputs_follow_the_models_quantisation():
    pixels = np.array([[0.0, 0.4, 127.6, 254.9, 300.0]], dtype=np.float32)
    uint8 = {"dtype": np.uint8, "quantization": (1.0, 0)}
    assert runtimes._quantised(pixels, uint8).tolist() == [[0, 0, 128, 255, 255]]
    int8 = {"dtype": np.int8, "quantization": (1.0, -128)}
    assert runtimes._quantised(pixels, int8).tolist() == [[-128, -128, 0, 127, 127]]
    floats = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert runtimes._quantised(pixels, floats) is not pixels and runtimes._quantised(pixels, floats).dtype == np.float32
    probs = np.array([[0, 128, 255]], dtype=np.uint8)
    assert np.allclose(runtimes._dequantised(probs, {"dtype": np.uint8, "quantization": (1 / 256, 0)}),
                       [[0, 0.5, 255 / 256]])


def test_the_class_list_beside_an_export_is_found_but_not_for_a_keras_model(tmp_path):
    (tmp_path / "classes.json").write_text('["a", "b"]')
    assert runtimes.classes_beside(tmp_path / "model_onnx.onnx") == tmp_path / "classes.json"
    assert runtimes.classes_beside(tmp_path / "model_saved_model") == tmp_path / "classes.json"
    assert runtimes.classes_beside(tmp_path / "model.keras") is None
    assert runtimes.classes_beside(tmp_path / "sub" / "m.onnx") is None
