"""extract: every split through the frozen backbone, once -> data/features/.

Writes ``<split>.npy`` (float16, one pooled feature vector per image, in the
split CSV's order), ``<split>_labels.npy`` and ``meta.json``. Images stream
through tf.data (parallel decode and resize, batching, prefetch) and features
go straight into a memory-mapped file, so memory stays flat as data grows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tlpipe import atomic, backbones, images, paths
from tlpipe.params import Params
from tlpipe.split import SPLITS, label_indices, read_classes, read_split, sources


def feature_model(spec: backbones.Backbone, image_size: int, weights: str):
    """pixels (0..255) -> the backbone's own preprocessing -> pooled features.

    Returns (model, backbone) so callers can fingerprint or reuse the backbone.
    """
    import keras

    from tlpipe.layers import Preprocess

    backbone = spec.build(image_size, weights, pooling="avg")
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = Preprocess(spec.preprocess, name="preprocess")(pixels)
    features = backbone(x, training=False)
    return keras.Model(pixels, features, name=f"{spec.name}_features"), backbone


def stream_features(model, rows, image_size: int, batch_size: int, out, desc: str) -> float:
    """Run ``rows`` through ``model`` into the array ``out``; return images/s."""
    start, done = time.perf_counter(), 0
    for feats in images.predict(model, *sources(rows), image_size, batch_size, desc):
        out[done : done + len(feats)] = feats
        done += len(feats)
    return len(rows) / max(time.perf_counter() - start, 1e-9)


def run(p: Params) -> dict:
    from tlpipe.training import seed_everything

    seed_everything(p.seed)
    spec = backbones.get(p.backbone)
    model, backbone = feature_model(spec, p.image_size, p.weights)
    dim = int(model.output.shape[-1])
    classes = read_classes()
    meta = {
        "backbone": p.backbone,
        "image_size": p.image_size,
        "weights": p.weights,
        "weights_sha256": backbones.weights_fingerprint(backbone),
        "feature_dim": dim,
        "classes": classes,
        "images": {},  # no timings here: a rerun must give a byte-identical output
    }
    with atomic.atomic_dir(paths.FEATURES) as tmp:
        for split in SPLITS:
            rows = read_split(split)
            out = np.lib.format.open_memmap(
                tmp / paths.features_file(split).name, mode="w+", dtype=np.float16, shape=(len(rows), dim)
            )
            rate = stream_features(
                model, rows, p.image_size, p.extract.batch_size, out, f"extract {split}"
            )
            out.flush()
            del out
            np.save(tmp / paths.labels_file(split).name, label_indices(rows, classes))
            meta["images"][split] = len(rows)
            print(f"extract: {split}: {len(rows)} images, {rate:.0f} img/s", flush=True)
        Path(tmp / paths.FEATURES_META.name).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load(split: str, features_dir: Path = paths.FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Cached features (as float32) and labels of one split."""
    x = np.load(features_dir / paths.features_file(split).name).astype(np.float32)
    y = np.load(features_dir / paths.labels_file(split).name)
    return x, y


def read_meta(features_dir: Path = paths.FEATURES) -> dict:
    return json.loads((features_dir / paths.FEATURES_META.name).read_text())
