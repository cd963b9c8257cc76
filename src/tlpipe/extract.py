"""extract: every split through the frozen backbone, once -> data/features/.

Writes ``<split>.npy`` (float16, one pooled feature vector per image, in the
split CSV's order), ``<split>_labels.npy`` and ``meta.json``. Images stream
through tf.data (parallel decode and resize, batching, prefetch) and features
go straight into a memory-mapped file, so memory stays flat as data grows.
"""

from __future__ import annotations

import json
import time

import numpy as np

from tlpipe import atomic, backbones, images, paths
from tlpipe.artifacts import SPLITS, label_indices, read_classes, read_split, sources
from tlpipe.params import ExtractParams


def feature_model(spec: backbones.Backbone, image_size: int, weights: str):
    """pixels (0..255) -> the backbone's own preprocessing -> pooled features.

    Returns (model, backbone) so callers can fingerprint or reuse the backbone.
    """
    import keras

    from tlpipe.layers import on_pixels

    backbone = spec.build(image_size, weights, pooling="avg")
    pixels, features = on_pixels(spec, image_size, backbone)
    return keras.Model(pixels, features, name=f"{spec.name}_features"), backbone


def stream_features(model, rows, image_size: int, batch_size: int, out, desc: str) -> float:
    """Run ``rows`` through ``model`` into the array ``out``; return images/s."""
    start, done = time.perf_counter(), 0
    for feats in images.predict(model, *sources(rows), image_size, batch_size, desc):
        out[done : done + len(feats)] = feats
        done += len(feats)
    return len(rows) / max(time.perf_counter() - start, 1e-9)


def run(extract: ExtractParams, *, backbone: str, image_size: int, weights: str, seed: int) -> dict:
    """data/split -> data/features; reads ``backbone``, ``image_size``, ``weights``,
    ``seed`` (random init with ``weights: none``) and ``extract.*``."""
    from tlpipe.training import seed_everything

    seed_everything(seed)
    spec = backbones.get(backbone)
    model, built = feature_model(spec, image_size, weights)
    dim = int(model.output.shape[-1])
    classes = read_classes()
    meta = {
        "backbone": backbone,
        "image_size": image_size,
        "weights": weights,
        "weights_sha256": backbones.weights_fingerprint(built),
        "feature_dim": dim,
        "classes": classes,
        "images": {},  # no timings here: a rerun must give a byte-identical output
    }
    with atomic.atomic_dir(paths.FEATURES) as tmp:
        for split in SPLITS:
            rows = read_split(split)
            out = np.lib.format.open_memmap(
                paths.features_file(split, tmp), mode="w+", dtype=np.float16, shape=(len(rows), dim)
            )
            rate = stream_features(model, rows, image_size, extract.batch_size, out, f"extract {split}")
            out.flush()
            del out
            np.save(paths.labels_file(split, tmp), label_indices(rows, classes))
            meta["images"][split] = len(rows)
            print(f"extract: {split}: {len(rows)} images, {rate:.0f} img/s", flush=True)
        paths.features_meta(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
