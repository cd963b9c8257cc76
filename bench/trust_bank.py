"""The trust stage's train bank: from the stored frozen prefix against from the images.

    python bench/trust_bank.py [REPO]   (REPO: after `dvc repro trust`; default .)

Times, in one process, the shipped model's pooled features of every train
image computed both ways (trust.train_features: the stored prefix through
the trained top; confidence.features: decode + the whole model), and prints
the ratio and how far apart the two are (cosine similarity per image).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    os.chdir(repo)
    sys.path.insert(0, str(repo / "src"))
    from tlpipe import confidence, paths, trust
    from tlpipe.artifacts import read_split
    from tlpipe.layers import load_model

    model, rows = load_model(paths.MODEL), read_split("train")
    confidence.features(model, rows[:64], 64, "")  # warm-up: trace both paths once
    trust.train_features(model, rows, 64)
    start = time.perf_counter()
    from_images = confidence.features(model, rows, 64, "from the images")
    images_s = time.perf_counter() - start
    start = time.perf_counter()
    from_prefix = trust.train_features(model, rows, 64)
    prefix_s = time.perf_counter() - start
    cosine = np.sum(confidence.normalised(from_prefix) * confidence.normalised(from_images), axis=1)
    print(f"{len(rows)} train images: from the images {images_s:.1f} s, from the stored prefix {prefix_s:.1f} s "
          f"({prefix_s / images_s:.2f}x); cosine similarity min {cosine.min():.6f}, mean {cosine.mean():.6f}")


if __name__ == "__main__":
    main()
