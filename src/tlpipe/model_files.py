"""A model file is verified before a native runtime reads it.

TensorFlow Lite's interpreter trusts the flatbuffer it is given: a file cut
short (a copy or download that stopped early) can kill the process with a
segmentation fault. So every file that ``tlpipe predict --model`` or an
export's re-check hands to a runtime passes here first:

1. **Against the record its writer left.** The export stage and ``tlpipe
   export`` write ``checksums.json`` beside what they export: the size and
   SHA-256 of every file. A file listed there is checked against it: any cut
   or changed byte is found, and the file is never opened otherwise.
2. **Without a record** (a file copied elsewhere), by its format's own
   structure: a ``.keras`` file's zip directory and CRCs, an ``.onnx`` file
   through ``onnx.checker``, a ``.tflite`` file's flatbuffer (its identifier,
   and every table and vector inside the file's length). That check cannot
   be complete for TFLite (a changed byte can point one offset at another
   valid place), so a TFLite file is then loaded and run once in a child
   process, whose death by a signal becomes the same one line.
   (A SavedModel is read by TensorFlow's own loader, which checks its
   variables' CRCs and raises rather than crashes.)

Every failure is a TlpipeError naming the file, what is wrong and how to get
a good copy back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

from tlpipe import atomic, paths, quiet
from tlpipe.errors import TlpipeError

RECORD = "checksums.json"
PROBE_SECONDS = 300


def _files_of(artifact: Path) -> list[Path]:
    return sorted(f for f in artifact.rglob("*") if f.is_file()) if artifact.is_dir() else [artifact]


def record(artifacts: list[Path], folder: Path) -> None:
    """Add (or renew) ``artifacts``' files in ``folder``/checksums.json: what
    their writer wrote, for ``verify`` to hold them to."""
    path = folder / RECORD
    entries = json.loads(path.read_text()) if path.is_file() else {}
    for artifact in artifacts:
        for f in _files_of(artifact):
            entries[f.relative_to(folder).as_posix()] = {"bytes": f.stat().st_size, "sha256": atomic.sha256_of(f)}
    atomic.write_text(path, json.dumps(dict(sorted(entries.items())), indent=2) + "\n")


def _way_back(path: Path) -> str:
    """How to get a good copy: `dvc checkout` where DVC tracks it."""
    try:
        inside_export = path.resolve().is_relative_to(paths.EXPORT.resolve())
        inside_models = path.resolve().is_relative_to(paths.MODELS.resolve())
    except OSError:
        inside_export = inside_models = False
    if inside_export:
        return f"`dvc checkout {paths.EXPORT}` restores the tracked export (or `dvc repro export` rebuilds it)"
    if inside_models:
        return f"`dvc checkout {paths.MODELS}` restores it (or `dvc repro` rebuilds it)"
    return "copy it again from where it came, or write it anew with `tlpipe export`"


def _damaged(path: Path, what: str) -> TlpipeError:
    return TlpipeError(f"{path}: {what}. {_way_back(path)[0].upper()}{_way_back(path)[1:]}.")


def _against_record(artifact: Path, entries: dict, folder: Path) -> None:
    for name, expected in entries.items():
        f = folder / name
        if artifact.is_dir() and not f.is_relative_to(artifact):
            continue
        if not f.is_file():
            raise _damaged(artifact, f"{f.relative_to(folder)} is missing (listed in {folder / RECORD})")
        size = f.stat().st_size
        if size < expected["bytes"]:
            raise _damaged(f, f"truncated: {atomic.size_text(size)} of the {atomic.size_text(expected['bytes'])} its export "
                              f"wrote ({folder / RECORD})")
        if size > expected["bytes"] or atomic.sha256_of(f) != expected["sha256"]:
            raise _damaged(f, f"damaged: its bytes are not the ones its export wrote ({atomic.size_text(size)}; the "
                              f"SHA-256 in {folder / RECORD} differs)")


def _recorded(artifact: Path) -> tuple[dict, Path] | None:
    """This artifact's entries in the record beside it, if it is listed there."""
    folder = artifact.parent
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise TlpipeError(f"{path} is not valid JSON; {_way_back(path)}.") from None
    name = artifact.relative_to(folder).as_posix()
    mine = {k: v for k, v in entries.items() if k == name or k.startswith(name + "/")}
    return (mine, folder) if mine else None


def verify(artifact: Path, kind: str) -> None:
    """Raise a TlpipeError if ``artifact`` (of runtime ``kind``) is not safe to
    hand to its runtime; return quietly if it is."""
    listed = _recorded(artifact)
    if listed is not None:
        _against_record(artifact, *listed)
        return
    {"keras": _check_keras, "onnx": _check_onnx, "tflite": _check_tflite}.get(kind, lambda p: None)(artifact)


def _check_keras(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # every member's CRC
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise _damaged(path, f"not a readable .keras file (a zip archive: {err})") from None
    if bad is not None:
        raise _damaged(path, f"damaged: its member {bad} fails its CRC check")
    missing = {"config.json", "model.weights.h5"} - names
    if missing:
        raise _damaged(path, f"not a Keras model file: {', '.join(sorted(missing))} missing")


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except Exception as err:  # protobuf's DecodeError, onnx's ValidationError
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise _damaged(path, f"not a valid ONNX model ({first})") from None


def _tflite_schema():
    """TFLite's flatbuffer schema as generated Python (shipped with TensorFlow),
    loaded by its path: reading the file needs no TensorFlow."""
    for entry in sys.path:
        candidate = Path(entry) / "tensorflow" / "lite" / "python" / "schema_py_generated.py"
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("tlpipe_tflite_schema", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def tflite_structure_problem(data: bytes) -> str | None:
    """What is wrong with a TFLite flatbuffer's structure, or None: its
    identifier, then every table and vector read, each within the file."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        return f"not a TFLite file (no TFL3 identifier in its first 8 bytes; {atomic.size_text(len(data))})"
    schema = _tflite_schema()
    if schema is None:
        return None
    try:
        model = schema.Model.GetRootAs(data, 0)
        model.Version()
        for i in range(model.OperatorCodesLength()):
            model.OperatorCodes(i).BuiltinCode()
        for s in range(model.SubgraphsLength()):
            graph = model.Subgraphs(s)
            graph.InputsAsNumpy(), graph.OutputsAsNumpy()
            for t in range(graph.TensorsLength()):
                tensor = graph.Tensors(t)
                tensor.ShapeAsNumpy(), tensor.Buffer(), tensor.Type()
            for o in range(graph.OperatorsLength()):
                op = graph.Operators(o)
                op.InputsAsNumpy(), op.OutputsAsNumpy(), op.OpcodeIndex()
        for b in range(model.BuffersLength()):
            buffer = model.Buffers(b)
            if buffer.DataLength():
                if len(buffer.DataAsNumpy()) != buffer.DataLength():
                    raise ValueError("a buffer runs past the end of the file")
            elif buffer.Offset() and buffer.Offset() + buffer.Size() > len(data):
                raise ValueError("a buffer stored after the flatbuffer runs past the end of the file")
    except Exception:  # struct.error, IndexError, ValueError: a read past the end
        return f"truncated or damaged: its flatbuffer points past the end of its {atomic.size_text(len(data))}"
    return None


_PROBE = """
import sys, warnings
import numpy as np
import tensorflow as tf
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
interpreter.invoke()
"""


def _check_tflite(path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _damaged(path, f"cannot be read ({err.strerror})") from None
    problem = tflite_structure_problem(data)
    if problem:
        raise _damaged(path, problem)
    _probe_in_a_child(path, _PROBE)


def _probe_in_a_child(path: Path, script: str) -> None:
    """Load and run ``path`` once in another process: a runtime that crashes
    on it takes that process down, not this one."""
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                              timeout=PROBE_SECONDS, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise _damaged(path, f"its runtime did not finish loading it in {PROBE_SECONDS} s") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise _damaged(path, f"damaged: its runtime crashed reading it ({name})")
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not quiet.is_tensorflow_log(line)]
        raise _damaged(path, f"not a readable model ({(lines[-1] if lines else 'exit status %d' % proc.returncode)[:200]})")
