"""A damaged model file is one clear line, never a crash: real exported files,
cut at every 5 % of their length and with bytes flipped in the middle."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tlpipe import model_files, paths, runtimes
from tlpipe.errors import TlpipeError

from conftest import REPO, tool_env, working_dir

FORMATS = ("tflite_float16", "tflite", "tflite_int8", "onnx", "saved_model")  # every format export writes
CUTS = [i / 20 for i in range(1, 20)]  # every 5 % of the length


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory):
    """A small real Keras classifier, exported as the export stage does, with
    the record of what was written (checksums.json) and the class list."""
    import keras

    from tlpipe import export

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    folder = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    calibration = lambda: (rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32) for _ in range(8))  # noqa: E731
    export.write_artifacts(model, list(FORMATS), folder, calibration)
    model.save(folder / "model.keras")
    model_files.record([export.artifact_path(f, folder) for f in FORMATS] + [folder / "model.keras"], folder)
    (folder / "classes.json").write_text('["a", "b", "c"]')
    return folder


def artifact(folder, fmt):
    from tlpipe import export

    return folder / "model.keras" if fmt == "keras" else export.artifact_path(fmt, folder)


def damaged_copies(folder, fmt, out):
    """(name, path) of copies of ``fmt``'s artifact cut at every 5 % and with
    16 bytes flipped in the middle; a SavedModel's largest file is damaged."""
    source = artifact(folder, fmt)
    target = max(source.rglob("*"), key=lambda f: f.stat().st_size if f.is_file() else -1) if source.is_dir() else source
    data = target.read_bytes()
    middle = len(data) // 2
    flipped = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]
    versions = [(f"cut{round(c * 100):02d}", data[: int(len(data) * c)]) for c in CUTS] + [("flipped", flipped)]
    for name, content in versions:
        copy = out / f"{fmt}_{name}" / source.name
        copy.parent.mkdir(parents=True)
        if source.is_dir():
            shutil.copytree(source, copy)
            (copy / target.relative_to(source)).write_bytes(content)
        else:
            copy.write_bytes(content)
        yield name, copy


@pytest.mark.parametrize("fmt", FORMATS + ("keras",))
def test_an_intact_recorded_file_opens_and_classifies(export_folder, fmt):
    runtime = runtimes.open_model(artifact(export_folder, fmt))
    probs = runtime(np.full((2, 16, 16, 3), 128, dtype=np.float32))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS + ("keras",))
def test_every_cut_or_flipped_copy_fails_against_the_record_before_any_runtime(export_folder, fmt, tmp_path):
    record = json.loads((export_folder / model_files.RECORD).read_text())
    for name, copy in damaged_copies(export_folder, fmt, tmp_path):
        mine = {k: v for k, v in record.items() if k.split("/")[0] == artifact(export_folder, fmt).name}
        (copy.parent / model_files.RECORD).write_text(json.dumps(mine))
        with pytest.raises(TlpipeError) as err:
            runtimes.open_model(copy)
        message = str(err.value)
        assert "\n" not in message and str(copy.parent) in message, message
        assert ("truncated: " if name.startswith("cut") else "damaged: ") in message, message


def test_a_truncated_file_says_how_much_of_it_is_there(export_folder, tmp_path):
    (name, copy), *_ = [(n, c) for n, c in damaged_copies(export_folder, "tflite_float16", tmp_path) if n == "cut50"]
    record = json.loads((export_folder / model_files.RECORD).read_text())
    (copy.parent / model_files.RECORD).write_text(json.dumps({copy.name: record[copy.name]}))
    with pytest.raises(TlpipeError, match=r"truncated: .* of the .* its export wrote"):
        runtimes.open_model(copy)


def test_a_tracked_export_names_the_dvc_checkout_that_restores_it(export_folder, tmp_path):
    with working_dir(tmp_path):
        shutil.copytree(export_folder, paths.EXPORT)
        path = paths.EXPORT / "model_onnx.onnx"
        path.write_bytes(path.read_bytes()[:100])
        with pytest.raises(TlpipeError, match=r"`dvc checkout models/export` restores the tracked export"):
            runtimes.open_model(path)


SWEEP = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from tlpipe import runtimes
from tlpipe.errors import TlpipeError
pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
reference = runtimes.open_model(sys.argv[2])(pixels)
for path in sys.argv[3:]:
    try:
        probs = runtimes.open_model(path)(pixels)
    except TlpipeError as err:
        print(json.dumps({"path": path, "rejected": str(err)}), flush=True)
    else:
        print(json.dumps({"path": path, "same": bool(np.allclose(probs, reference, atol=1e-2)),
                          "top": bool((probs.argmax(1) == reference.argmax(1)).all())}), flush=True)
"""


@pytest.mark.parametrize("fmt", FORMATS + ("keras",))
def test_without_a_record_no_damaged_copy_crashes_or_passes_for_the_original(export_folder, fmt, tmp_path):
    """Copied elsewhere, with no checksums.json: each format's own structure,
    and for TFLite a run in a child process. One process opens every damaged
    copy: a crash would end it early, and this test with it."""
    copies = [str(copy) for _, copy in damaged_copies(export_folder, fmt, tmp_path)]
    proc = subprocess.run([sys.executable, "-c", SWEEP, str(REPO / "src"), str(artifact(export_folder, fmt)), *copies],
                          capture_output=True, text=True, timeout=1800, env=tool_env())
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    seen = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [s["path"] for s in seen] == copies
    for s in seen:
        if "rejected" in s:
            assert "\n" not in s["rejected"] and s["path"] in s["rejected"]
        else:  # accepted only if it really classifies as the original does
            assert s["same"] and s["top"], s


def test_predict_on_a_cut_tflite_file_is_one_line_and_exit_status_2(export_folder, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export_folder, folder)
    model = folder / "model_tflite_float16.tflite"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 40, 40)).save(image)
    proc = subprocess.run([sys.executable, "-m", "tlpipe", "predict", str(image), "--model", str(model)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**tool_env(), "PYTHONPATH": str(REPO / "src")})  # this checkout's code
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"tlpipe predict: error: {model}: truncated: ") and "Traceback" not in proc.stderr


def test_predict_with_an_intact_tflite_file_prints_rows_and_no_start_up_log(export_folder, tmp_path):
    """`tlpipe predict` is a tlpipe process like the stages: TensorFlow's and
    TFLite's start-up lines (the XNNPACK delegate's among them) stay out."""
    from PIL import Image

    from tlpipe import quiet

    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20), (40, 40, 200)).save(image)
    proc = subprocess.run([sys.executable, "-m", "tlpipe", "predict", str(image), "--model",
                           str(export_folder / "model_tflite_float16.tflite")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**tool_env(), "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("path,predicted") and len(proc.stdout.splitlines()) == 2
    assert [line for line in proc.stderr.splitlines() if quiet.is_tensorflow_log(line) or "INFO" in line] == []
