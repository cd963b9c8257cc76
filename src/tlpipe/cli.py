"""The ``tlpipe`` command: use the trained model.

    tlpipe predict PATH...        classify image files, folders (recursively) and globs,
                                  with the Keras model or any exported one (--model)
    tlpipe export --format F      write the model as one export format, then score it on test
    tlpipe compare                the experiments side by side: params changed, headline metrics
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

from tlpipe import paths, quiet
from tlpipe.errors import TlpipeError
from tlpipe.images import IMAGE_SUFFIXES, is_hidden
from tlpipe.params import EXPORT_FORMATS
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


def _load(model_path: Path, classes_path: Path | None):
    """The model in its own runtime and its class names (by default the list
    shipped beside an exported artifact, else the pipeline's)."""
    from tlpipe import runtimes

    runtimes.kind_of(model_path)  # a missing or unknown model is named before the class list
    classes_path = classes_path or runtimes.classes_beside(model_path) or paths.CLASSES
    if not classes_path.is_file():
        raise TlpipeError(f"No class list at {classes_path}; pass --classes PATH (a JSON list of names).")
    try:
        classes = json.loads(classes_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        classes = err
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise TlpipeError(f"{classes_path} must hold a JSON list of class names, e.g. [\"cats\", \"dogs\"]; "
                          f"it does not ({str(classes)[:80]!r}).")
    runtime = runtimes.open_model(model_path)
    if runtime.n_classes != len(classes):
        raise TlpipeError(
            f"{classes_path} lists {len(classes)} classes but {model_path} predicts {runtime.n_classes}: they "
            "come from different runs. Pass the class list the model was trained with (--classes), or rerun "
            "`dvc repro`."
        )
    return runtime, classes


def _trust_for(model_path: Path, runtime):
    """The prediction sets' calibration beside the model (models/trust/ for the
    Keras model, trust.json beside an export) and, for the Keras model, the
    train features the unfamiliar score compares with; (None, None) without."""
    from tlpipe import confidence

    folder = model_path.parent / paths.TRUST.name if runtime.kind == "keras" else model_path.parent
    trust = confidence.load(folder)
    bank = confidence.load_bank(folder) if trust and runtime.kind == "keras" else None
    return trust, bank


def _forward(runtime, bank, neighbours: int):
    """pixels -> (probabilities, unfamiliar distances or None), one pass."""
    if bank is None:
        return lambda x: (runtime(x), None)
    import tensorflow as tf

    from tlpipe import confidence
    from tlpipe.layers import with_features

    both = with_features(runtime.keep)
    step = tf.function(lambda x: both(x, training=False), reduce_retracing=True)

    def forward(x):
        probs, features = step(tf.constant(x))
        return probs.numpy().astype("float64"), confidence.unfamiliar_scores(features.numpy(), bank, neighbours)

    return forward


PREDICT_COLUMNS = ["path", "predicted", "probability", "top_k", "prediction_set", "unsure", "unfamiliar",
                   "unfamiliar_score", "error"]
# A multi-label model's: the label set decided (joined by the run's label delimiter; a list in JSON lines) and every
# label's probability.
MULTI_LABEL_COLUMNS = ["path", "predicted", "probabilities", "unfamiliar", "unfamiliar_score", "error"]


def _label_decisions(model_path: Path, runtime, classes: list[str]):
    """A multi-label model's per-label thresholds (chosen on val) and label
    delimiter: in the Keras model itself, or thresholds.json beside an
    export. (None, None) for a model of one label per image."""
    from tlpipe import export as exporting
    from tlpipe.artifacts import read_task

    if runtime.kind == "keras":
        from tlpipe.layers import thresholds_of

        thresholds = thresholds_of(runtime.keep)
        return (None, None) if thresholds is None else (thresholds, read_task().delimiter)
    beside = model_path.parent / exporting.THRESHOLDS
    if not beside.is_file():
        return None, None
    try:
        saved = json.loads(beside.read_text())
        return [float(saved["thresholds"][c]) for c in classes], saved["delimiter"]
    except (ValueError, KeyError, TypeError) as err:
        raise TlpipeError(f"{beside} must hold the export's delimiter and a threshold for each of {classes} "
                          f"({type(err).__name__}: {err}); rerun `dvc repro export`.") from None


def predict(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from tlpipe import confidence, images

    model_path = Path(args.model)
    runtime, classes = _load(model_path, args.classes and Path(args.classes))
    trust, bank = _trust_for(model_path, runtime)
    forward = _forward(runtime, bank, trust.neighbours if trust else 0)
    files = _collect(args.paths)
    top_k = min(args.top_k, len(classes))
    thresholds, delimiter = _label_decisions(model_path, runtime, classes)
    columns = PREDICT_COLUMNS if thresholds is None else MULTI_LABEL_COLUMNS
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer:
        writer.writerow(columns)
    failed = 0

    def emit_label_set(path, probs=None, distance=None, error=""):
        row = dict.fromkeys(columns)
        row.update(path=str(path), error=error)
        if probs is not None:
            row.update(predicted=[c for c, p, t in zip(classes, probs, thresholds) if p >= t],
                       probabilities={c: round(float(p), 6) for c, p in zip(classes, probs)})
            if distance is not None:
                row.update(unfamiliar=bool(distance > trust.unfamiliar_threshold),
                           unfamiliar_score=round(float(distance), 6))
        if writer:
            cells = {**row, "predicted": delimiter.join(row["predicted"] or []),
                     "probabilities": ";".join(f"{c}:{p}" for c, p in (row["probabilities"] or {}).items())}
            writer.writerow(["" if cells[k] is None else str(cells[k]).lower() if isinstance(cells[k], bool)
                             else cells[k] for k in columns])
        else:
            out.write(json.dumps(row) + "\n")

    def emit(path, probs=None, distance=None, error=""):
        if thresholds is not None:
            return emit_label_set(path, probs, distance, error)
        row = dict.fromkeys(PREDICT_COLUMNS)
        row.update(path=str(path), top_k=[], error=error)
        if probs is not None:
            order = np.argsort(-probs, kind="stable")[:top_k]
            row.update(predicted=classes[order[0]], probability=round(float(probs[order[0]]), 6),
                       top_k=[[classes[i], round(float(probs[i]), 6)] for i in order])
            if trust and trust.threshold is not None:
                in_set = confidence.prediction_sets(probs[None], trust.threshold)[0]
                row["prediction_set"] = [c for c, keep in zip(classes, in_set) if keep]
                row["unsure"] = len(row["prediction_set"]) != 1
            if distance is not None:
                row.update(unfamiliar=bool(distance > trust.unfamiliar_threshold),
                           unfamiliar_score=round(float(distance), 6))
        if writer:
            cells = {**row, "top_k": ";".join(f"{c}:{p}" for c, p in row["top_k"]),
                     "prediction_set": ";".join(row["prediction_set"] or [])}
            writer.writerow(["" if cells[k] is None else str(cells[k]).lower() if isinstance(cells[k], bool)
                             else cells[k] for k in PREDICT_COLUMNS])
        else:
            out.write(json.dumps(row) + "\n")

    def check(path):
        return path, images.inspect(path) if path.is_file() else None

    # Streamed in chunks: memory stays flat over any number of files; within a
    # chunk decoding and the forward pass overlap as in extract, and the next
    # chunk's files are checked while this one's run through the model.
    chunks = [files[start : start + PREDICT_CHUNK] for start in range(0, len(files), PREDICT_CHUNK)]
    with tqdm(total=len(files), desc="predict", unit="img", disable=len(files) < 100 or None) as bar, \
            ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        next_checks = pool.map(check, chunks[0]) if chunks else iter(())
        for i in range(len(chunks)):
            checks = list(next_checks)
            if i + 1 < len(chunks):
                next_checks = pool.map(check, chunks[i + 1])
            good = [(p, c) for p, c in checks if c is not None and c.ok]
            rows = iter(())
            if good:
                batches = images.dataset([p for p, _ in good], [c.decoder for _, c in good], runtime.image_size,
                                         args.batch_size)
                rows = ((probs, None if dist is None else dist[i]) for batch in batches
                        for probs_batch, dist in [forward(batch.numpy())] for i, probs in enumerate(probs_batch))
            for p, c in checks:  # in input order
                if c is None or not c.ok:
                    failed += 1
                    emit(p, error="no such file" if c is None else c.reason)
                else:
                    emit(p, *next(rows))
                bar.update(1)
    if args.out:
        out.close()
    if failed:
        print(f"predict: {failed} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def export(args) -> int:
    """One format, written where --out says, then scored on the test split by
    its own runtime against the Keras model (what the export stage does for
    every format in export.formats)."""
    import tensorflow as tf

    from tlpipe import atomic, model_files, runtimes
    from tlpipe import export as exporting
    from tlpipe.artifacts import read_split

    reference, classes = _load(Path(args.model), args.classes and Path(args.classes))
    if reference.kind != "keras":
        raise TlpipeError(f"tlpipe export converts a tlpipe .keras model; {args.model} is a {reference.kind} "
                          "model. Pass --model models/model.keras.")
    rows = read_split("test")
    if not rows:
        raise TlpipeError(f"{paths.split_csv('test')} is empty; no test images to check the export on.")
    fmt = args.format
    out = Path(args.out) if args.out else exporting.artifact_path(fmt)
    representative = None
    if fmt == "tflite_int8":
        calibration = exporting.representative_rows(args.representative_images, _seed())
        representative = lambda: exporting.pixel_batches(calibration, reference.image_size)  # noqa: E731
    try:
        if fmt == "saved_model":
            with atomic.atomic_dir(out) as tmp:
                exporting.write_artifact(reference.keep, fmt, tmp, representative)
        else:
            with atomic.atomic_path(out, out.suffix) as tmp:
                exporting.write_artifact(reference.keep, fmt, tmp, representative)
        atomic.write_text(out.parent / "classes.json", json.dumps(classes))
        model_files.record([out], out.parent)  # what the re-check below and `--model` hold the file to
        trust = Path(args.model).parent / paths.TRUST.name / "trust.json"
        if trust.is_file():  # the prediction sets' threshold, as the export stage ships it
            atomic.write_text(out.parent / "trust.json", trust.read_text())
        thresholds, delimiter = _label_decisions(Path(args.model), reference, classes)
        if thresholds is not None:  # multi-label: each label's threshold, as the export stage ships it
            atomic.write_text(out.parent / exporting.THRESHOLDS, exporting.thresholds_json(classes, thresholds,
                                                                                           delimiter))
    except (OSError, tf.errors.OpError) as err:  # TensorFlow's own file I/O raises OpError
        reason = getattr(err, "strerror", None) or str(getattr(err, "message", err)).splitlines()[0]
        raise TlpipeError(
            f"Cannot write the export to {out}: {reason}. Choose a writable place with --out PATH."
        ) from None
    results = exporting.score_runtimes({"keras": reference, fmt: runtimes.open_model(out)}, rows, classes,
                                       thresholds=thresholds)
    r = results[fmt]
    print(f"export: wrote {out} ({exporting.size_bytes(out) / 1e6:.2f} MB) and {out.parent / 'classes.json'}")
    print(f"export: on {len(rows)} test images: accuracy {r['accuracy']:.4f} (Keras model "
          f"{results['keras']['accuracy']:.4f}), same {'label set' if thresholds else 'top class'} {r['agreement']:.4f}, largest probability "
          f"difference {r['max_probability_difference']:.2e}")
    failures = exporting.accuracy_drops(results, args.max_accuracy_drop)
    print(f"export: {'FAILED: ' + failures[0] if failures else 'OK'}")
    return 1 if failures else 0


def _seed() -> int:
    """params.yaml's seed where there is one: the export stage's calibration sample."""
    from tlpipe import params

    try:
        return params.load().seed
    except TlpipeError:
        return 0


def compare(args) -> int:
    from tlpipe import compare as comparing

    print(comparing.render(comparing.rows(comparing.exp_show()), args.width), end="")
    return 0


def plots_page(args) -> int:
    from tlpipe import plots_page as page

    return page.main()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tlpipe", description="Use the classifier that `dvc repro` trained.")
    sub = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=str(paths.MODEL),
                        help="a tlpipe model: .keras, .tflite, .onnx or a SavedModel folder (default: %(default)s)")
    common.add_argument("--classes", help="class names, a JSON list (default: classes.json beside an exported "
                                          f"model, else {paths.CLASSES})")

    p = sub.add_parser("predict", parents=[common], help="classify images",
                       description="Classify image files, folders (recursively) and globs. Exit status 1 "
                                   "if any file could not be read (it gets a row with the error).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder or glob ('**' recurses)")
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="output format (default: csv)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image (default: 3)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.set_defaults(func=predict)

    e = sub.add_parser("export", parents=[common], help="export the model and score the export on test",
                       description="Write the model in one format (the export stage writes every format in "
                                   "export.formats), then score it on the test split in its own runtime "
                                   "against the Keras model. Exit status 1 if it loses more accuracy than "
                                   "--max-accuracy-drop.")
    e.add_argument("--format", choices=("keras", *EXPORT_FORMATS), required=True)
    e.add_argument("--out", help="output path (default: models/export/model_FORMAT...)")
    e.add_argument("--representative-images", type=int, default=200,
                   help="train images that calibrate tflite_int8 (default: %(default)s)")
    e.add_argument("--max-accuracy-drop", type=float, default=0.01,
                   help="test accuracy the export may lose (default: %(default)s)")
    e.set_defaults(func=export)

    c = sub.add_parser("compare", help="the experiments side by side on one screen",
                       description="The workspace, each baseline and its experiments (`dvc exp show --json`): "
                                   "the params each changed against its baseline and the headline metrics "
                                   "(test accuracy, macro F1, log loss, the head's accuracy, val loss, what "
                                   "shipped, fit seconds), wrapped to fit --width.")
    c.add_argument("--width", type=int, default=160, help="the most columns a line takes (default: %(default)s)")
    c.set_defaults(func=compare)

    g = sub.add_parser("plots-page", help="regenerate the offline page template of `dvc plots show`",
                       description="Write .dvc/offline_plots.html: DVC's plots page with Vega inlined "
                                   "from the pinned vl-convert-python, so every plot renders offline.")
    g.set_defaults(func=plots_page)
    return top


def main(argv: list[str] | None = None) -> int:
    quiet.install()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TlpipeError as err:
        print(f"tlpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
