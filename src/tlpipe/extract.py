"""extract: every split through the frozen backbone, once -> data/features/, data/prefix/.

``data/features``: ``<split>.npy`` (float16, one pooled feature vector per
image, in the split CSV's order), ``<split>_labels.npy`` and ``meta.json``;
what the head trains on.

``data/prefix``: for every split, the output of the part of the backbone
that ``freeze`` keeps frozen (the tensor entering the first trained stage),
taken from the same forward pass, so fine-tuning never pushes an image through
the frozen layers again, and trust and evaluate score the shipped model on
stored outputs too; for val also its output on the mirror images
(``val_mirror.npy``, from the same decoded batch), so finetune's choice of
mirror-image test-time augmentation reads stored outputs too. It is its own
DVC output: a new ``freeze`` value rewrites it and leaves the pooled features
(and so the head) untouched, and DVC's run-cache restores it for a value seen
before. It is left empty (with
the reason in its meta.json) when nothing is frozen below trained layers, or
when it would take more than ``extract.prefix_max_gb`` (or the free disk);
fine-tuning reads it from disk in batches, so its size never costs memory.

Images stream through tf.data (parallel decode and resize, batching,
prefetch) and outputs are written to their files a batch at a time
(artifacts.RowWriter), so memory stays flat as data grows.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tlpipe import atomic, backbones, freeze, images, paths, resume, training
from tlpipe.artifacts import (SPLITS, Row, RowWriter, label_indices, npy_bytes, read_classes, read_split, read_task,
                              sources)
from tlpipe.params import ExtractParams

# Also through the frozen layers on their mirror images: what the mirror
# average is chosen on. Not test: the prefix of a split's images is free (the
# same forward pass), its mirror images' cost a pass through the frozen layers.
MIRRORED_SPLITS = ("val",)
# Train images whose near-copies calibrate the audit's near-duplicate threshold
# (three copies each: a few percent of extract's images on a typical set).
COPY_SAMPLE = 64


def feature_model(spec: backbones.Backbone, image_size: int, weights: str, freeze_word: str = "all",
                  pooling: str = "avg"):
    """pixels (0..255) -> the backbone's own preprocessing -> pooled features
    (and the frozen prefix's output, as a second model sharing the layers).

    Returns (pooled model, pooled + prefix model or None, backbone, freeze plan).
    """
    import keras

    from tlpipe.layers import on_pixels

    backbone, plan = freeze.frozen_backbone(spec, image_size, weights, freeze_word, pooling)
    half = _float16()
    pixels, features = on_pixels(spec, image_size, backbone)
    pooled = keras.Model(pixels, half(features), name=f"{spec.name}_features")
    both = None
    if plan.has_prefix:
        two_outputs = keras.Model(backbone.input, [backbone.output, plan.boundary])
        pixels, outputs = on_pixels(spec, image_size, two_outputs)
        both = keras.Model(pixels, [half(o) for o in outputs], name=f"{spec.name}_features_and_prefix")
    return pooled, both, backbone, plan


def _float16():
    """Outputs cast to float16 inside the graph: what is stored, at half the
    bytes to copy out of TensorFlow (the same rounding as NumPy's cast)."""
    import keras

    return keras.layers.Activation(lambda t: keras.ops.cast(t, "float16"), dtype="float32")


def with_mirrored_prefix(both, spec: backbones.Backbone, image_size: int, backbone, plan: freeze.Plan):
    """``both`` (pooled features and prefix) with a third output: the prefix's
    output on the mirror image of the same decoded batch (the frozen layers
    alone: no pooled features are computed for it)."""
    import keras

    from tlpipe.layers import Mirror, on_pixels

    prefix = keras.Model(backbone.input, plan.boundary)
    mirrored = keras.Model(*on_pixels(spec, image_size, prefix, (Mirror(name="mirror"),)), name="mirrored_prefix")
    return keras.Model(both.input, [*both.outputs, _float16()(mirrored(both.input))], name=f"{both.name}_mirrored")


def stream_features(model, rows, image_size: int, batch_size: int, outs, desc: str, first: int = 0,
                    written=None) -> float:
    """Run ``rows[first:]`` through ``model`` into the arrays ``outs`` (one
    per model output, or one array), from row ``first`` on; ``written(rows
    done)`` after each batch; return images/s."""
    start, done = time.perf_counter(), first
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    for batch in images.predict(model, *sources(rows[first:]), image_size, batch_size, desc):
        batch = batch if isinstance(batch, list) else [batch]
        for out, values in zip(outs, batch):
            out[done : done + len(values)] = values
        done += len(batch[0])
        if written:
            written(done)
    return (len(rows) - first) / max(time.perf_counter() - start, 1e-9)


class Progress:
    """Where extract stands: the rows of each split written so far to the
    files in ``folder``, recorded after each batch's rows are written. In
    ``.tlpipe/resume/extract`` (tlpipe.resume) when extract runs in a
    pipeline, so a killed run's rows are kept and the rerun computes only the
    missing ones, in the same batches (the same bytes); only for this run
    otherwise. A record of other inputs or another layout is removed."""

    FILE = "progress.json"

    def __init__(self, folder: Path, key: str | None, layout: dict):
        self.folder, self.key, self.layout = folder, key, layout
        self.rows: dict[str, int] = {}
        record = self._read()
        if record is not None:
            why = ("it was made with other params, data or code" if record.get("key") != key
                   else "it was made for another layout of the outputs" if record.get("layout") != layout
                   else self._damaged(record.get("rows", {})))
            if why:
                resume.discard("extract", folder, why)
            else:
                self.rows = record["rows"]
        (folder / "features").mkdir(parents=True, exist_ok=True)
        (folder / "prefix").mkdir(parents=True, exist_ok=True)

    def _files(self, split: str):
        """(file, its size when complete) of every array written for ``split``."""
        n, shape = self.layout["images"][split], tuple(self.layout["prefix_shape"])
        yield paths.features_file(split, self.folder / "features"), npy_bytes(n, (self.layout["feature_dim"],))
        if shape:
            for name in (split, *([paths.mirrored(split)] if split in MIRRORED_SPLITS else [])):
                yield paths.prefix_file(name, self.folder / "prefix"), npy_bytes(n, shape)

    def _damaged(self, rows: dict) -> str:
        for split in (s for s, done in rows.items() if done):
            for file, size in self._files(split):
                if not file.is_file():
                    return f"{file.name} is missing"
                if file.stat().st_size != size:
                    return f"{file.name} is truncated ({file.stat().st_size} of {size} bytes)"
        return ""

    def _read(self) -> dict | None:
        try:
            return json.loads((self.folder / self.FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def done(self, split: str) -> int:
        return self.rows.get(split, 0)

    def record(self, split: str, rows: int) -> None:
        self.rows[split] = rows
        atomic.write_json(self.folder / self.FILE, {"key": self.key, "layout": self.layout, "rows": self.rows})


@contextlib.contextmanager
def _work_folder(key: str | None, layout: dict):
    """Progress of this extract, in the resume folder or (outside a pipeline) a temporary one."""
    if key is None:
        with atomic.scratch_beside(paths.FEATURES.parent / "extract") as tmp:  # not a temporary name of an output
            yield Progress(Path(tmp), None, layout)
        return
    where = resume.folder("extract")
    progress = Progress(where, key, layout)
    if any(progress.rows.values()):
        summary = ", ".join(f"{split} {rows}" for split, rows in progress.rows.items())
        print(f"extract: resuming with the rows written before an interruption ({summary}; in {where})", flush=True)
    yield progress
    resume.finished(where)


def near_copies(path: Path) -> dict[str, bytes]:
    """The copies a data set gets of one photo, as JPEG bytes: half size
    re-encoded, a 90 % centre crop, the same size at low JPEG quality."""
    from PIL import Image

    img = Image.fromarray(images.read_rgb(path))
    w, h = img.size
    cw, ch = max(1, int(w * 0.9)), max(1, int(h * 0.9))
    left, top = (w - cw) // 2, (h - ch) // 2

    def jpeg(image, quality):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()

    return {
        "half_size": jpeg(img.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS), 75),
        "crop_90": jpeg(img.crop((left, top, left + cw, top + ch)), 90),
        "jpeg_40": jpeg(img, 40),
    }


def copy_features(model, train_rows: list[Row], image_size: int, batch_size: int, seed: int, folder: Path,
                  dim: int) -> int:
    """Features of near-copies of a seeded sample of train images, through the
    same model as every image -> copies_file, copies_of_file in ``folder``."""
    n = min(COPY_SAMPLE, len(train_rows))
    sample = np.sort(np.random.default_rng(seed).choice(len(train_rows), n, replace=False)) if n else []
    with tempfile.TemporaryDirectory() as tmp:
        copy_rows, originals = [], []
        for i in sample:
            for kind, data in near_copies(paths.RAW / train_rows[i].path).items():
                file = Path(tmp) / f"{i}_{kind}.jpg"
                file.write_bytes(data)
                copy_rows.append(Row(str(file), train_rows[i].label, "tf"))
                originals.append(int(i))
        out = np.zeros((len(copy_rows), dim), dtype=np.float16)
        if copy_rows:
            stream_features(model, copy_rows, image_size, batch_size, out, "extract: near-copies for the audit")
    np.save(paths.copies_file(folder), out)
    np.save(paths.copies_of_file(folder), np.asarray(originals, dtype=np.int64))
    return len(copy_rows)


def _prefix_plan(plan: freeze.Plan, rows: dict[str, list[Row]], max_gb: float) -> tuple[tuple[int, ...] | None, str]:
    """(prefix output shape, "") when the prefix is worth writing, else (None, why not).
    Disk decides, not memory: fine-tuning reads the stored outputs from disk in batches."""
    if not plan.has_prefix:
        return None, f"freeze '{plan.word}' leaves no frozen layers below trained ones"
    shape = tuple(int(d) for d in plan.boundary.shape[1:])
    stored_rows = sum(len(rows[s]) for s in SPLITS) + sum(len(rows[s]) for s in MIRRORED_SPLITS)
    size = stored_rows * int(np.prod(shape)) * 2  # float16
    free = shutil.disk_usage(paths.PREFIX.parent if paths.PREFIX.parent.exists() else ".").free
    if size > max_gb * 1e9 or size > free:
        limit = (f"more than 'extract.prefix_max_gb' ({max_gb:g}); raise it (dvc exp run -S "
                 f"extract.prefix_max_gb={max(1, int(np.ceil(size * 1.2 / 1e9)))})" if size > max_gb * 1e9
                 else f"more than the {free / 1e9:.1f} GB free on the disk")
        return None, (f"the frozen prefix's outputs would take {size / 1e9:.1f} GB, {limit}; "
                      "fine-tuning streams images through the whole backbone instead")
    return shape, ""


def run(extract: ExtractParams, *, backbone: str, image_size: int, weights: str, seed: int, freeze_word: str,
        pooling: str) -> dict:
    """data/split -> data/features, data/prefix; reads ``backbone``, ``image_size``,
    ``weights``, ``seed`` (random init with ``weights: none``), ``freeze`` (as
    ``freeze_word``), ``pooling`` and ``extract.*``."""
    from tlpipe.layers import GridPooling

    training.seed_everything(seed)
    spec = backbones.get(backbone)
    pooled, both, built, plan = feature_model(spec, image_size, weights, freeze_word, pooling)
    dim = int(pooled.output.shape[-1])
    classes = read_classes()
    rows = {split: read_split(split) for split in SPLITS}
    fingerprint = backbones.weights_fingerprint(built)
    meta = {
        "backbone": backbone,
        "image_size": image_size,
        "weights": weights,
        "weights_sha256": fingerprint,
        "pooling": pooling,
        "feature_dim": dim,
        "average_columns": dim // GridPooling.PARTS if pooling == "grid" else dim,  # the global average's, first
        "classes": classes,
        **({"multi_label": True} if read_task().multi_label else {}),  # labels_*.npy: multi-hot rows
        "images": {},  # no timings here: a rerun must give a byte-identical output
    }
    prefix_shape, why_not = _prefix_plan(plan, rows, extract.prefix_max_gb)
    prefix_meta = {
        "backbone": backbone, "image_size": image_size, "weights_sha256": fingerprint, "freeze": plan.word,
        "cached": prefix_shape is not None, "shape": list(prefix_shape or ()), "reason": why_not,
        "bytes_per_image": int(np.prod(prefix_shape)) * 2 if prefix_shape else 0,
    }
    mirrored_model = with_mirrored_prefix(both, spec, image_size, built, plan) if prefix_shape is not None else None
    n_images = sum(len(r) for r in rows.values())
    atomic.require_space(paths.FEATURES.parent, n_images * dim * 2 * 1.1,  # float16, the near-copies' rows beside
                         f"extract: the pooled features of {n_images} images")
    layout = {"feature_dim": dim, "prefix_shape": list(prefix_shape or ()), "batch_size": extract.batch_size,
              "images": {split: len(rows[split]) for split in SPLITS}}
    with _work_folder(resume.stage_key("extract"), layout) as progress:
        work_feats, work_prefix = progress.folder / "features", progress.folder / "prefix"
        for split in SPLITS:
            n, first = len(rows[split]), progress.done(split)
            outs = [RowWriter(paths.features_file(split, work_feats), n, (dim,), keep=first > 0)]
            model = pooled
            if prefix_shape is not None:
                outs.append(RowWriter(paths.prefix_file(split, work_prefix), n, prefix_shape, keep=first > 0))
                model = both
            if prefix_shape is not None and split in MIRRORED_SPLITS:
                outs.append(RowWriter(paths.prefix_file(paths.mirrored(split), work_prefix), n, prefix_shape,
                                      keep=first > 0))
                model = mirrored_model
            if first < n:
                rate = stream_features(model, rows[split], image_size, extract.batch_size, outs, f"extract {split}",
                                       first, lambda done, split=split: progress.record(split, done))
                print(f"extract: {split}: {n} images, {rate:.0f} img/s", flush=True)
            np.save(paths.labels_file(split, work_feats), label_indices(rows[split], classes))
            meta["images"][split] = n
        meta["near_copies"] = copy_features(pooled, rows["train"], image_size, extract.batch_size, seed, work_feats,
                                            dim)
        paths.features_meta(work_feats).write_text(json.dumps(meta, indent=2) + "\n")
        paths.prefix_meta(work_prefix).write_text(json.dumps(prefix_meta, indent=2) + "\n")
        for work, target in ((work_feats, paths.FEATURES), (work_prefix, paths.PREFIX)):
            with atomic.atomic_dir(target) as tmp:
                for file in work.iterdir():
                    shutil.move(file, tmp / file.name)  # a rename, unless data/ is on another disk
    if why_not:
        print(f"extract: frozen prefix not stored: {why_not}")
    return meta
