"""export: the shipped model in the formats it is deployed in, each one scored
on the test split by its own runtime -> models/export/, reports/export.json
(each format's accuracy drop in metrics/export.json).

What an exported file scores is measured, not assumed: TFLite's interpreter,
ONNX Runtime and a reloaded SavedModel each classify every test image, and
``reports/export.json`` holds, per format, the accuracy, macro F1, agreement
with the Keras model (same top-1 class), bytes and milliseconds per image
(one thread, batch 1, the median over the first test images), so ``dvc
metrics diff`` shows what a deployment choice costs. A format that loses more
than ``export.max_accuracy_drop`` of test accuracy fails the stage, after the
metrics are written. This is the pipeline's end-to-end check on the test
images themselves: evaluate scores the shipped model on their stored prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from tlpipe import atomic, headline, images, model_files, multilabel, paths, runtimes
from tlpipe.artifacts import label_indices, read_classes, read_split, read_task, sources
from tlpipe.errors import TlpipeError
from tlpipe.params import ExportParams

# Each artifact's file under models/export/, named after its format.
_FILE_SUFFIX = {"saved_model": "", "tflite": ".tflite", "tflite_float16": ".tflite",
                "tflite_int8": ".tflite", "onnx": ".onnx", "keras": ".keras"}


def artifact_path(fmt: str, folder: Path = paths.EXPORT) -> Path:
    return folder / f"model_{fmt}{_FILE_SUFFIX[fmt]}"


def write_artifact(model, fmt: str, out: Path, representative=None, saved_model: Path | None = None) -> None:
    """Write ``model`` as ``fmt`` to ``out`` (a folder for saved_model).

    ``representative``: a function giving an iterator of float32 pixel
    batches (train images), the calibration data of full-integer quantisation.
    ``saved_model``: ``model`` already exported as a SavedModel, which the
    TFLite formats convert from (exporting one takes as long as a conversion).
    """
    if fmt == "keras":
        atomic.save_keras(out, model)
    elif fmt == "saved_model":
        with _variables_in_name_order():
            model.export(str(out), format="tf_saved_model", verbose=False)
        _content_derived_uuid(out)
    elif fmt == "onnx":
        # Keras' own exporter (tf2onnx underneath); batch size left dynamic. The
        # input signature given outright: without it the exporter refuses a model
        # loaded from disk and never called ("The model provided has never called").
        import keras

        pixels = model.inputs[0]
        signature = [keras.InputSpec(shape=(None, *pixels.shape[1:]), dtype=pixels.dtype, name=pixels.name)]
        with warnings.catch_warnings():  # tf2onnx on NumPy 2: "np.object ... FutureWarning", harmless
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(out), format="onnx", verbose=False, input_signature=signature)
        canonical_onnx_names(out)
    elif saved_model is not None:
        out.write_bytes(_tflite_bytes(saved_model, fmt, representative))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False)
            out.write_bytes(_tflite_bytes(Path(tmp), fmt, representative))


@contextlib.contextmanager
def _variables_in_name_order():
    """Keras' SavedModel export lists the model's variables in the order of
    TensorFlow's traced function's ``variables``, a set keyed by object id:
    another order in every process, so the same model gave another
    ``saved_model.pb`` and ``variables/`` each time. Sorted by name they come
    out the same. (A private Keras function: should a Keras release move it,
    the export still works, and tests/test_export.py says the bytes moved.)"""
    try:
        from keras.src.export import saved_model_export_archive as archive

        listed = archive._list_variables_used_by_fns
    except (ImportError, AttributeError):
        yield
        return

    def by_name(functions):
        trainable, non_trainable = listed(functions)
        return sorted(trainable, key=lambda v: v.name), sorted(non_trainable, key=lambda v: v.name)

    archive._list_variables_used_by_fns = by_name
    try:
        yield
    finally:
        archive._list_variables_used_by_fns = listed


def _content_derived_uuid(saved_model: Path) -> None:
    """TensorFlow stamps a random UUID into ``fingerprint.pb``; one derived
    from the fingerprint's hashes of the content names the same model the
    same way in every export (the other fields already are content hashes)."""
    import hashlib

    from tensorflow.core.protobuf import fingerprint_pb2

    path = saved_model / "fingerprint.pb"
    if not path.is_file():
        return
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def canonical_onnx_names(path: Path) -> None:
    """Rewrite ``path`` so that its bytes depend on what it computes alone.

    tf2onnx numbers the names it makes from a process-wide counter, merges
    equal constants under whichever name a set yields first and lists
    independent nodes in no fixed order, so one model exported twice gave two
    files that compute the same but differ in bytes (and in
    reports/export.json's ``bytes``). Here the nodes are listed in a
    topological order whose ties are broken by what each node computes
    (_structural_order); a node is named by its Keras layer path and its
    operation, ``LAYER/OP`` (numbered by position where two are alike), its
    outputs are ``NODE/output_i``, a constant is named after its first reader,
    ``NODE/input_j``, and an unknown size is ``batch`` (the first axis) or
    ``dim_i``; graph inputs and outputs keep their names, which callers use."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # control flow: its subgraphs read outer names; left as tf2onnx wrote it
    fixed = {v.name for v in (*graph.input, *graph.output)}
    constants = {t.name for t in graph.initializer}
    ordered_nodes = _structural_order(graph)
    del graph.node[:]
    graph.node.extend(ordered_nodes)
    renamed, seen = {}, {}
    for node in graph.node:
        base = _scope(node.name) + node.op_type
        seen[base] = seen.get(base, 0) + 1
        node.name = base if seen[base] == 1 else f"{base}__{seen[base] - 1}"
        for j, name in enumerate(node.input):
            if name in constants and name not in renamed and name not in fixed:
                renamed[name] = f"{node.name}/input_{j}"
        for j, name in enumerate(node.output):
            if name and name not in fixed:
                renamed[name] = f"{node.name}/output_{j}"
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for tensor in graph.initializer:
        tensor.name = renamed.get(tensor.name, tensor.name)
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    for info in (*graph.input, *graph.output, *graph.value_info):
        for i, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.dim_param = "batch" if i == 0 else f"dim_{i}"
    graph.doc_string = "the shipped Keras model (tlpipe), converted by tf2onnx"  # was the traced function's name
    ordered_constants = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered_constants)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _scope(name: str) -> str:
    """A node name's Keras layer path (less tf2onnx's ``__N`` counters), with
    its trailing slash: the op's own name is dropped, since of equal nodes that
    tf2onnx merged any one's name may survive."""
    return re.sub(r"__\d+", "", name).rpartition("/")[0] + "/" if "/" in name else ""


def _structural_order(graph) -> list:
    """``graph``'s nodes in a topological order that ties on each node's
    digest: its operation, attributes, layer path, and its inputs' digests
    (a constant's: its values; a graph input's: its name)."""
    import hashlib
    import heapq

    digest = {v.name: hashlib.sha256(b"input " + v.name.encode()).hexdigest() for v in graph.input}
    for tensor in graph.initializer:
        values = _copy(tensor)
        values.name = ""
        digest[tensor.name] = hashlib.sha256(values.SerializeToString()).hexdigest()
    node_digest, producer = [], {}
    for i, node in enumerate(graph.node):  # tf2onnx's order is topological: inputs before readers
        h = hashlib.sha256(f"{node.domain} {node.op_type} {_scope(node.name)}".encode())
        for attribute in sorted(node.attribute, key=lambda a: a.name):
            h.update(attribute.SerializeToString())
        for name in node.input:
            h.update(digest.get(name, "").encode())
        node_digest.append(h.hexdigest())
        for j, name in enumerate(node.output):
            digest[name] = hashlib.sha256(f"{node_digest[i]} {j}".encode()).hexdigest()
            producer[name] = i
    waiting = [sum(1 for name in set(node.input) if name in producer) for node in graph.node]
    readers = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if name in producer:
                readers[producer[name]].append(i)
    ready = [(node_digest[i], i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(graph.node[i])
        for reader in readers[i]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, (node_digest[reader], reader))
    return [_copy(node) for node in order]  # copies: the caller empties graph.node


def _copy(message):
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def _tflite_bytes(saved_model: Path, fmt: str, representative) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # at least int8 weights (dynamic range)
    if fmt == "tflite_float16":
        converter.target_spec.supported_types = [tf.float16]
    if fmt == "tflite_int8":
        if representative is None:
            raise TlpipeError("tflite_int8 needs representative images to calibrate on.")
        converter.representative_dataset = lambda: ([batch] for batch in representative())
        # Integers end to end (uint8 pixels in, uint8 probabilities out): what
        # microcontrollers and the Edge TPU compiler require.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def write_artifacts(model, formats: list[str], folder: Path, representative) -> None:
    """Every format of ``formats`` into ``folder``, the SavedModel exported
    once: it is an artifact itself when asked for, and what TFLite converts."""
    with tempfile.TemporaryDirectory() as scratch:
        graph = artifact_path("saved_model", folder if "saved_model" in formats else Path(scratch))
        for fmt in sorted(formats, key=lambda f: f != "saved_model"):  # the SavedModel first
            start = time.perf_counter()
            if not graph.exists() and (fmt == "saved_model" or fmt.startswith("tflite")):
                write_artifact(model, "saved_model", graph)
            if fmt != "saved_model":
                write_artifact(model, fmt, artifact_path(fmt, folder), representative, saved_model=graph)
            print(f"export: wrote {artifact_path(fmt)} in {time.perf_counter() - start:.1f}s", flush=True)


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def representative_rows(n: int, seed: int):
    """A seeded sample of ``n`` train images (never val or test) to calibrate int8 on."""
    rows = read_split("train")
    if not rows:
        raise TlpipeError(f"{paths.split_csv('train')} is empty: no images to calibrate tflite_int8 on.")
    n = min(n, len(rows))
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
    return [rows[i] for i in keep]


def pixel_batches(rows, image_size: int, batch_size: int = 1):
    """The images of ``rows`` in batches (one by one by default), read exactly as in training."""
    for batch in images.dataset(*sources(rows), image_size, batch_size):
        yield batch.numpy()


# Test images per call when a runtime's decisions are scored: in batches, as a
# folder of images would be classified. At batch 1, four runtimes on one
# thread made scoring 70 % of the stage; 8 scores 2.4x faster than 1, and
# larger batches gain nothing more but memory (bench/export.py times scoring).
SCORING_BATCH = 8
# ms_per_image: the median of this many batch-1 calls per runtime, on the
# first test images, after one call that warms the runtime up at batch 1.
LATENCY_CALLS = 50


# Runtimes that share TensorFlow's thread pools (process-wide, one thread in
# this stage); TFLite's interpreter and ONNX Runtime have threads of their own.
_TENSORFLOW_KINDS = ("keras", "saved_model")


def scoring_lanes(opened: dict[str, runtimes.Runtime], cores: int | None = None) -> list[list[str]]:
    """The runtimes in lanes that classify side by side, one per core: TensorFlow's
    in one (a second TensorFlow caller would wait for the same thread), the
    others in the next; all in one lane on one core."""
    tensorflow = [name for name, r in opened.items() if r.kind in _TENSORFLOW_KINDS]
    others = [name for name in opened if name not in tensorflow]
    if (cores or os.cpu_count() or 1) < 2 or not tensorflow or not others:
        return [list(opened)]
    return [tensorflow, others]


def score_runtimes(opened: dict[str, runtimes.Runtime], rows, classes: list[str], cores: int | None = None,
                   thresholds=None) -> dict:
    """Every runtime classifies every test image (one pass over them, in
    batches of SCORING_BATCH, the lanes of ``scoring_lanes`` side by side)
    -> its decisions' figures; and its latency, ms per image at batch 1 on
    one thread, each runtime alone (``latency_ms``). Multi-label: each
    runtime decides at the shipped model's ``thresholds``."""
    from tqdm import tqdm

    size = opened["keras"].image_size
    probs = {name: [] for name in opened}
    lanes = scoring_lanes(opened, cores)
    with (tqdm(total=len(rows), desc=f"export: {len(opened)} runtimes on test", unit="img", mininterval=1) as bar,
          ThreadPoolExecutor(len(lanes)) as pool):
        for x in pixel_batches(rows, size, SCORING_BATCH):
            for lane in pool.map(lambda names: [(name, opened[name](x)) for name in names], lanes):
                for name, p in lane:
                    probs[name].append(p)
            bar.update(len(x))
    latency = latency_ms(opened, rows[:LATENCY_CALLS], size)
    y_true = label_indices(rows, classes)
    reference = np.concatenate(probs["keras"])
    if y_true.ndim == 2:
        return _multi_label_figures({name: np.concatenate(p) for name, p in probs.items()}, y_true, classes,
                                    thresholds, latency)
    results = {}
    for name in opened:
        p = np.concatenate(probs[name])
        # Decisions only: a quantised model's probabilities need not sum to 1.
        y_pred = p.argmax(axis=1)
        results[name] = {
            "accuracy": round(float(skm.accuracy_score(y_true, y_pred)), 4),
            "f1_macro": round(float(skm.f1_score(y_true, y_pred, labels=list(range(len(classes))), average="macro",
                                                 zero_division=0)), 4),
            "agreement": round(float(np.mean(p.argmax(axis=1) == reference.argmax(axis=1))), 4),
            "max_probability_difference": float(f"{np.abs(p - reference).max():.3g}"),
            "ms_per_image": latency[name],
        }
    return results


def _multi_label_figures(probs: dict[str, np.ndarray], y_true: np.ndarray, classes: list[str], thresholds,
                         latency: dict[str, float]) -> dict:
    """Multi-label runtimes' figures: ``accuracy`` is the share of test images
    given exactly their label set (what export.max_accuracy_drop bounds),
    ``agreement`` the share given exactly the Keras model's label set, and
    the mean average precision over labels."""
    reference = multilabel.decisions(probs["keras"], thresholds)
    results = {}
    for name, p in probs.items():
        figures = multilabel.scores(y_true, p, classes, thresholds)
        results[name] = {
            "accuracy": figures["subset_accuracy"],
            "average_precision_macro": figures["average_precision_macro"],
            "f1_macro": figures["f1_macro"],
            "agreement": round(float(np.mean(np.all(multilabel.decisions(p, thresholds) == reference, axis=1))), 4),
            "max_probability_difference": float(f"{np.abs(p - probs['keras']).max():.3g}"),
            "ms_per_image": latency[name],
        }
    return results


def latency_ms(opened: dict[str, runtimes.Runtime], rows, image_size: int) -> dict[str, float]:
    """Each runtime's median ms per call at batch 1 over ``rows``' images."""
    pixels = list(pixel_batches(rows, image_size))
    latency = {}
    for name, runtime in opened.items():
        runtime(pixels[0])  # warm-up: a new input shape (TFLite reallocates, a tf.function traces)
        seconds = []
        for x in pixels:
            start = time.perf_counter()
            runtime(x)
            seconds.append(time.perf_counter() - start)
        latency[name] = round(1000 * float(np.median(seconds)), 3)
    return latency


def accuracy_drops(results: dict, max_drop: float) -> list[str]:
    """One line per format that loses more than ``max_drop`` of test accuracy."""
    reference = results["keras"]["accuracy"]
    return [
        f"{fmt} scores {r['accuracy']:.4f} test accuracy against the Keras model's {reference:.4f}, a drop of "
        f"{reference - r['accuracy']:.4f} > export.max_accuracy_drop={max_drop:g}"
        for fmt, r in results.items()
        if fmt != "keras" and reference - r["accuracy"] > max_drop + 1e-9
    ]


# Beside a multi-label run's exports: {"delimiter": ..., "thresholds": {label: threshold}}.
THRESHOLDS = "thresholds.json"


def thresholds_json(classes: list[str], thresholds, delimiter: str) -> str:
    return json.dumps({"delimiter": delimiter, "thresholds": dict(zip(classes, thresholds))}, indent=2) + "\n"


def _one_thread() -> bool:
    """TensorFlow's thread pools limited to one thread (ms_per_image on one
    core); possible only before TensorFlow starts, so False when it has."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        return True
    except RuntimeError:
        return False


def run(xp: ExportParams, seed: int) -> dict:
    """models/model.keras -> models/export/, reports/export.json, metrics/export.json; reads ``export.*``, ``seed``."""
    classes = read_classes()
    if not xp.formats:
        with atomic.atomic_dir(paths.EXPORT) as tmp:
            (tmp / "classes.json").write_text(json.dumps(classes))
        headline.write("export", {})
        print("export: export.formats is []: nothing exported")
        return {}
    test_rows = read_split("test")
    if not test_rows:
        raise TlpipeError(f"{paths.split_csv('test')} is empty: no test images to score the exports on.")
    one_thread = _one_thread()
    from tlpipe.layers import Mirror, load_model, temperature_of, thresholds_of

    model = load_model(paths.MODEL)
    thresholds = thresholds_of(model)
    size = int(model.input_shape[1])
    calibration = representative_rows(xp.representative_images, seed) if "tflite_int8" in xp.formats else []
    with atomic.atomic_dir(paths.EXPORT) as tmp:
        (tmp / "classes.json").write_text(json.dumps(classes))
        # The prediction sets' threshold travels with every artifact (they give
        # probabilities); the unfamiliar score needs the Keras model's features.
        shutil.copy(paths.TRUST / "trust.json", tmp / "trust.json")
        if thresholds is not None:  # multi-label: each label's decision threshold, chosen on val
            (tmp / THRESHOLDS).write_text(thresholds_json(classes, thresholds, read_task().delimiter))
        write_artifacts(model, xp.formats, tmp, lambda: pixel_batches(calibration, size))
        # every artifact's size and SHA-256: `tlpipe predict --model` holds a file to them
        model_files.record([artifact_path(fmt, tmp) for fmt in xp.formats], tmp)
    opened = {"keras": runtimes.open_model(paths.MODEL, threads=1)}
    opened.update({fmt: runtimes.open_model(artifact_path(fmt), threads=1) for fmt in xp.formats})
    results = score_runtimes(opened, test_rows, classes, thresholds=thresholds)
    for fmt in results:
        results[fmt]["bytes"] = size_bytes(paths.MODEL if fmt == "keras" else artifact_path(fmt))
        if fmt != "keras":
            results[fmt]["accuracy_drop"] = round(results["keras"]["accuracy"] - results[fmt]["accuracy"], 4)
    del results["keras"]["agreement"], results["keras"]["max_probability_difference"]
    # What every artifact holds because it is the shipped model's own graph.
    results["shipped"] = {
        "mirror_average": any(isinstance(layer, Mirror) for layer in model.layers),
        "temperature": temperature_of(model),
        **({"thresholds": dict(zip(classes, thresholds))} if thresholds is not None else {}),
        "test_images": len(test_rows),
        "latency_images": min(LATENCY_CALLS, len(test_rows)),
        "representative_images": len(calibration),
        "one_thread": one_thread,
    }
    headline.write("export", results)
    _print_table(results)
    failures = accuracy_drops({k: v for k, v in results.items() if k != "shipped"}, xp.max_accuracy_drop)
    if failures:
        raise TlpipeError("; ".join(failures) + f" (figures written to {paths.EXPORT_REPORT}).")
    return results


def _print_table(results: dict) -> None:
    print(f"export: on {results['shipped']['test_images']} test images (ms/img: one thread, batch 1):")
    print(f"export:   {'format':15s} {'accuracy':>8s} {'agree':>7s} {'MB':>7s} {'ms/img':>7s}")
    for fmt, r in results.items():
        if fmt == "shipped":
            continue
        agree = f"{r['agreement']:.4f}" if "agreement" in r else "-"
        print(f"export:   {fmt:15s} {r['accuracy']:8.4f} {agree:>7s} {r['bytes'] / 1e6:7.2f} {r['ms_per_image']:7.2f}")
