"""Run a tlpipe model in the runtime it ships to: the Keras file, a SavedModel,
a TFLite file (float or full-integer) or an ONNX file.

Every runtime takes the same input, float32 RGB pixels in 0..255 (NHWC, at
the model's own size), and gives probabilities: the model holds its
preprocessing, mirror average and temperature, so nothing else is needed to
use it. The export stage scores each artifact through these, and
``tlpipe predict --model`` reads any of them, so the file a user deploys is
the file that was checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tlpipe import model_files, quiet
from tlpipe.errors import TlpipeError

# How a path names its runtime (a folder: a SavedModel).
SUFFIXES = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}


@dataclass
class Runtime:
    """One loaded model: ``runtime(pixels)`` -> probabilities (float64)."""

    kind: str  # keras | saved_model | tflite | onnx
    image_size: int
    n_classes: int
    forward: Callable[[np.ndarray], np.ndarray]
    keep: object = None  # what must stay alive while ``forward`` is used (a loaded SavedModel)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.forward(np.asarray(pixels, dtype=np.float32)), dtype=np.float64)


def kind_of(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise TlpipeError(f"{path} is a folder without saved_model.pb: not a SavedModel. Pass a .keras, "
                          ".tflite or .onnx file, or a SavedModel folder.")
    if not path.is_file():
        raise TlpipeError(f"No model at {path}; run `dvc repro` first or pass --model PATH.")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TlpipeError(f"{path}: unknown model type {path.suffix or '(no suffix)'!r}; tlpipe runs "
                          f"{', '.join(sorted(SUFFIXES))} files and SavedModel folders.")
    return kind


def open_model(path: Path | str, threads: int | None = None) -> Runtime:
    """Load ``path`` in its own runtime. ``threads`` bounds TFLite's and ONNX
    Runtime's threads (None: theirs to choose); TensorFlow's are process-wide."""
    path = Path(path)
    kind = kind_of(path)
    model_files.verify(path, kind)  # before any native runtime reads it: a damaged file never crashes us
    try:
        return _OPENERS[kind](path, threads)
    except TlpipeError:
        raise
    except Exception as err:  # each runtime raises its own types for a damaged file
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise TlpipeError(
            f"{path} is not a readable {kind} model ({first}). Rebuild it with `dvc repro` "
            f"(or `tlpipe export`), or restore it with `dvc checkout`."
        ) from None


def _keras(path: Path, threads) -> Runtime:
    import tensorflow as tf

    from tlpipe.layers import load_model

    model = load_model(path)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return Runtime("keras", int(model.input_shape[1]), int(model.output_shape[-1]),
                   lambda x: forward(tf.constant(x)).numpy(), keep=model)


def _saved_model(path: Path, threads) -> Runtime:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    (out_spec,) = signature.structured_outputs.values()
    return Runtime("saved_model", int(spec.shape[1]), int(out_spec.shape[-1]),
                   lambda x: loaded.serve(tf.constant(x)).numpy(), keep=loaded)


def _tflite(path: Path, threads) -> Runtime:
    import tensorflow as tf

    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": still TensorFlow's own
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = [None]

    def forward(x):
        if shape[0] != x.shape:
            interpreter.resize_tensor_input(inp["index"], x.shape)
            with quiet.filtered_stderr():  # where TFLite applies its delegate, and says so
                interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(inp["index"], _quantised(x, inp))
        interpreter.invoke()
        return _dequantised(interpreter.get_tensor(out["index"]), out)

    return Runtime("tflite", int(inp["shape"][1]), int(out["shape"][-1]), forward, keep=interpreter)


def _quantised(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels -> the integer input of a fully quantised model (as is otherwise)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantised(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind not in "iu":
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float64) - zero) * scale


def _onnx(path: Path, threads) -> Runtime:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    out = session.get_outputs()[0]
    return Runtime("onnx", int(inp.shape[1]), int(out.shape[-1]),
                   lambda x: session.run([out.name], {inp.name: x})[0], keep=session)


_OPENERS = {"keras": _keras, "saved_model": _saved_model, "tflite": _tflite, "onnx": _onnx}


def classes_beside(path: Path | str) -> Path | None:
    """The class list shipped next to an exported artifact, if there is one."""
    path = Path(path)
    beside = path.parent / "classes.json"
    return beside if beside.is_file() and path.suffix.lower() != ".keras" else None
