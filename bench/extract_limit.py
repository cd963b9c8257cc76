"""Extraction throughput against its compound limit, measured in one run.

    python bench/extract_limit.py      (KERAS_HOME=../shared/keras offline)

The `extract` stage decodes, resizes and runs the backbone on the same 2 cores.
Its limit is the compound of the two pure costs measured here:
  decode+resize alone (tf.data, no model) at D img/s,
  backbone forward alone on in-memory tensors at F img/s,
  compound limit = 1 / (1/D + 1/F) img/s (the work of both, sharing the cores).
Needs `dvc repro split` done first (uses data/split/train.csv).
"""

import time

from _common import REPO, require_keras_home

require_keras_home()
import os  # noqa: E402

os.chdir(REPO)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tlpipe import backbones, extract, images, params, paths  # noqa: E402
from tlpipe.artifacts import read_split  # noqa: E402

p = params.load()
rows = read_split("train")
files, decoders = [paths.RAW / r.path for r in rows], [r.decoder for r in rows]
spec = backbones.get(p.backbone)
# What the stage runs over train: pooled features and the frozen prefix's output
# (for the default freeze) from one forward pass.
pooled, both, _, plan = extract.feature_model(spec, p.image_size, p.weights, p.freeze)
model = both or pooled
batch = p.extract.batch_size


def rate(fn, n):
    fn(min(n, 2 * batch))  # warm-up: tracing, thread pools
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def decode_only(n):
    for _ in images.dataset(files[:n], decoders[:n], p.image_size, batch):
        pass


pixels = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, p.image_size, p.image_size, 3)), tf.float32)
forward = tf.function(lambda x: model(x, training=False))


def forward_only(n):
    for _ in range(int(np.ceil(n / batch))):
        out = forward(pixels)
        [o.numpy() for o in out] if isinstance(out, (list, tuple)) else out.numpy()


def stage(n):
    outs = [np.zeros((n, *[int(d) for d in o.shape[1:]]), np.float16) for o in model.outputs]
    extract.stream_features(model, rows[:n], p.image_size, batch, outs, "extract")


n = len(rows)
d = rate(decode_only, n)
f = rate(forward_only, n)
s = rate(stage, n)
limit = 1 / (1 / d + 1 / f)
print(f"backbone {p.backbone} @ {p.image_size}px, freeze {plan.word} (prefix stored: {both is not None}), "
      f"{n} images, batch {batch}, {os.cpu_count()} cores")
print(f"decode+resize only:   {d:7.1f} img/s")
print(f"backbone forward only:{f:7.1f} img/s")
print(f"compound limit:       {limit:7.1f} img/s")
print(f"extract stage:        {s:7.1f} img/s")
print(f"extract / limit:      {s / limit:7.1%}  (target >= 90%)")
