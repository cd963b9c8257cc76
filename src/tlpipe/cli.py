"""The ``tlpipe`` command: use the trained model.

    tlpipe predict PATH...        classify image files, folders (recursively) and globs
    tlpipe export --format F      write the model as keras | saved_model | tflite, then check it
    tlpipe plots-page             regenerate .dvc/offline_plots.html (`dvc plots show` offline)
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tlpipe import paths
from tlpipe.errors import TlpipeError
from tlpipe.images import IMAGE_SUFFIXES, is_hidden

# Largest probability difference accepted between the Keras model and an
# exported artifact, per format.
# Quantised TFLite models are judged by their decisions instead (same top class).
TOLERANCE = {"keras": 1e-6, "saved_model": 1e-5, "tflite": 1e-4}
# Files checked and predicted per step of `tlpipe predict`: bounds its memory.
PREDICT_CHUNK = 1024


def _collect(args: list[str]) -> list[Path]:
    """Files named, files under folders (recursively, image suffixes), glob matches."""
    found: list[Path] = []
    empty = []
    for arg in args:
        matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))] if glob.has_magic(arg) else [Path(arg)]
        if not matches:
            raise TlpipeError(f"No file matches {arg!r}.")
        for path in matches:
            if path.is_dir():
                inside = sorted(
                    p for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p.relative_to(path))
                )
                found += inside
                empty += [] if inside else [str(path)]
            else:
                found.append(path)  # a missing or broken file gets an error row
    if not found:
        raise TlpipeError(
            f"No image file in {', '.join(empty or args)}: nothing to classify. Give image files, folders "
            f"holding them (searched recursively for {', '.join(sorted(IMAGE_SUFFIXES))}) or globs."
        )
    return found


def _load(model_path: Path, classes_path: Path):
    if not model_path.is_file():
        raise TlpipeError(f"No model at {model_path}; run `dvc repro` first or pass --model PATH.")
    if not classes_path.is_file():
        raise TlpipeError(f"No class list at {classes_path}; pass --classes PATH (a JSON list of names).")
    try:
        classes = json.loads(classes_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        classes = err
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise TlpipeError(f"{classes_path} must hold a JSON list of class names, e.g. [\"cats\", \"dogs\"]; "
                          f"it does not ({str(classes)[:80]!r}).")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tlpipe.layers import load_model

    try:
        model = load_model(model_path)
    except Exception as err:  # Keras raises ValueError, OSError, zipfile/h5py errors alike
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise TlpipeError(
            f"{model_path} is not a readable tlpipe Keras model ({first}). Rebuild it with `dvc repro`, "
            f"or restore the last one with `dvc checkout {model_path}`."
        ) from None
    outputs = int(model.output_shape[-1])
    if outputs != len(classes):
        raise TlpipeError(
            f"{classes_path} lists {len(classes)} classes but {model_path} predicts {outputs}: they come from "
            "different runs. Pass the class list the model was trained with (--classes), or rerun `dvc repro`."
        )
    return model, classes


def predict(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from tlpipe import images

    model, classes = _load(Path(args.model), Path(args.classes))
    size = int(model.input_shape[1])
    files = _collect(args.paths)
    top_k = min(args.top_k, len(classes))
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer:
        writer.writerow(["path", "predicted", "probability", "top_k", "error"])
    failed = 0

    def emit(path, probs=None, error=""):
        if probs is None:
            row = {"path": str(path), "predicted": None, "probability": None, "top_k": [], "error": error}
        else:
            order = np.argsort(-probs, kind="stable")[:top_k]
            row = {
                "path": str(path),
                "predicted": classes[order[0]],
                "probability": round(float(probs[order[0]]), 6),
                "top_k": [[classes[i], round(float(probs[i]), 6)] for i in order],
                "error": "",
            }
        if writer:
            top = ";".join(f"{c}:{p}" for c, p in row["top_k"])
            writer.writerow([row["path"], row["predicted"] or "", row["probability"] or "", top, row["error"]])
        else:
            out.write(json.dumps(row) + "\n")

    def check(path):
        return path, images.inspect(path) if path.is_file() else None

    # Streamed in chunks: memory stays flat over any number of files, and
    # within a chunk decoding and the forward pass overlap as in extract.
    with tqdm(total=len(files), desc="predict", unit="img", disable=len(files) < 100 or None) as bar, \
            ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        for start in range(0, len(files), PREDICT_CHUNK):
            checks = list(pool.map(check, files[start : start + PREDICT_CHUNK]))
            good = [(p, c) for p, c in checks if c is not None and c.ok]
            rows = iter(())
            if good:
                batches = images.predict(model, [p for p, _ in good], [c.decoder for _, c in good], size,
                                         args.batch_size)
                rows = (row for batch in batches for row in batch)
            for p, c in checks:  # in input order
                if c is None or not c.ok:
                    failed += 1
                    emit(p, error="no such file" if c is None else c.reason)
                else:
                    emit(p, next(rows))
                bar.update(1)
    if args.out:
        out.close()
    if failed:
        print(f"predict: {failed} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def _check_images(n: int = 8):
    """A few real test images, read exactly as in training."""
    from tlpipe import images
    from tlpipe.artifacts import read_split

    rows = read_split("test")[:n]
    return [paths.RAW / r.path for r in rows], [r.decoder for r in rows], images


def export(args) -> int:
    import tensorflow as tf

    model, _ = _load(Path(args.model), Path(args.classes))
    size = int(model.input_shape[1])
    files, decoders, images = _check_images()
    if not files:
        raise TlpipeError("The test split is empty; nothing to check the export against.")
    x = next(iter(images.dataset(files, decoders, size, len(files)))).numpy()
    expected = model.predict_on_batch(x)
    fmt = args.format
    out = Path(args.out or {"keras": "models/export.keras", "saved_model": "models/saved_model",
                            "tflite": "models/model.tflite"}[fmt])
    if args.quantize and fmt != "tflite":
        raise TlpipeError("--quantize applies to --format tflite only.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _export_to(out, fmt, model, x, expected, files, args.quantize)
    except (OSError, tf.errors.OpError) as err:  # TensorFlow's own file I/O raises OpError
        reason = getattr(err, "strerror", None) or str(getattr(err, "message", err)).splitlines()[0]
        raise TlpipeError(
            f"Cannot write the export to {out}: {reason}. Choose a writable place with --out PATH."
        ) from None


def _export_to(out: Path, fmt: str, model, x, expected, files, quantize) -> int:
    import numpy as np
    import tensorflow as tf

    if fmt == "keras":
        from tlpipe import atomic
        from tlpipe.layers import load_model

        atomic.save_keras(out, model)
        got = load_model(out).predict_on_batch(x)
        size_bytes = out.stat().st_size
    elif fmt == "saved_model":
        from tlpipe import atomic

        with atomic.atomic_dir(out) as tmp_dir:
            model.export(str(tmp_dir), format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(out))  # keep a reference: its variables die with it
        got = loaded.serve(tf.constant(x)).numpy()
        size_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            model.export(tmp, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if quantize:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "float16":
                converter.target_spec.supported_types = [tf.float16]
            data = converter.convert()
        from tlpipe import atomic

        with atomic.atomic_path(out, ".tflite") as tmp_path:
            tmp_path.write_bytes(data)
        interpreter = tf.lite.Interpreter(model_path=str(out))
        inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        got = interpreter.get_tensor(outp["index"])
        size_bytes = out.stat().st_size
    got = np.asarray(got, dtype=np.float64)
    diff = float(np.abs(got - expected).max())
    agree = int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
    print(f"export: wrote {out} ({size_bytes / 1e6:.2f} MB)")
    print(f"export: on {len(files)} test images: largest probability difference {diff:.2e}, "
          f"same top class {agree}/{len(files)}")
    if quantize:
        # Quantisation changes probabilities by design; what must hold is the decision.
        ok = agree == len(files)
        print(f"export: {'OK' if ok else 'FAILED'}: quantised model must pick the same class on every check image")
    else:
        tolerance = TOLERANCE[fmt]
        ok = diff <= tolerance
        print(f"export: {'OK' if ok else 'FAILED'}: tolerance {tolerance:g}")
    return 0 if ok else 1


def plots_page(args) -> int:
    from tlpipe import plots_page as page

    return page.main()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tlpipe", description="Use the classifier that `dvc repro` trained.")
    sub = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=str(paths.MODEL), help="a tlpipe .keras model (default: %(default)s)")
    common.add_argument("--classes", default=str(paths.CLASSES), help="class names, JSON (default: %(default)s)")

    p = sub.add_parser("predict", parents=[common], help="classify images",
                       description="Classify image files, folders (recursively) and globs. Exit status 1 "
                                   "if any file could not be read (it gets a row with the error).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder or glob ('**' recurses)")
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="output format (default: csv)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image (default: 3)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.set_defaults(func=predict)

    e = sub.add_parser("export", parents=[common], help="export the model and check the export",
                       description="Write the model in another format, reload it and compare its predictions "
                                   "with the Keras model's on real test images.")
    e.add_argument("--format", choices=("keras", "saved_model", "tflite"), required=True)
    e.add_argument("--quantize", choices=("dynamic", "float16"), help="TFLite post-training quantisation")
    e.add_argument("--out", help="output path (default: under models/)")
    e.set_defaults(func=export)

    g = sub.add_parser("plots-page", help="regenerate the offline page template of `dvc plots show`",
                       description="Write .dvc/offline_plots.html: DVC's plots page with Vega inlined "
                                   "from the pinned vl-convert-python, so every plot renders offline.")
    g.set_defaults(func=plots_page)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TlpipeError as err:
        print(f"tlpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
