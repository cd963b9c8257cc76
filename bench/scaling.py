"""How extraction cost grows: 2k, 5k and 20k synthetic images.

    python bench/scaling.py [2000 5000 20000]

Each size runs the `extract` stage's code in its own process (random-weight
backbone from params.yaml, so no download) and reports wall time, images/s
and the process's peak RSS. Time should grow linearly, memory stay flat.
"""

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, tool_env
from PIL import Image

SIZES = [int(a) for a in sys.argv[1:]] or [2000, 5000, 20000]

CHILD = r"""
import os, sys, time
sys.path.insert(0, {src!r}); os.chdir({work!r})
from tlpipe import params, extract
p = params.load({params!r})
p = p.with_overrides(weights="none")
start = time.perf_counter()
extract.run(p.extract, backbone=p.backbone, image_size=p.image_size, weights=p.weights, seed=p.seed,
            freeze_word=p.freeze)
print("SECONDS", time.perf_counter() - start)
"""


def make_dataset(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    split = root / "data" / "split"
    split.mkdir(parents=True)
    rows = {"train": [], "val": [], "test": []}
    for i in range(n):
        label = ("a", "b")[i % 2]
        rel = f"{label}/{i:06d}.jpg"
        path = root / "data" / "raw" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if i < 64:  # a few distinct files, hard-linked: decoding cost is what matters
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path, quality=90)
        else:
            path.hardlink_to(root / "data" / "raw" / f"{label}/{i % 64:06d}.jpg")
        rows["train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")].append(f"{rel},{label},tf")
    for name, lines in rows.items():
        (split / f"{name}.csv").write_text("path,label,decoder\n" + "\n".join(lines) + "\n")
    (split / "classes.json").write_text('["a", "b"]\n')


print(f"{'images':>8} {'seconds':>8} {'img/s':>7} {'peak RSS MB':>12}")
results = []
for n in SIZES:
    with tempfile.TemporaryDirectory(prefix="tlpipe-scale-") as tmp:
        root = Path(tmp)
        make_dataset(root, n)
        code = CHILD.format(src=str(REPO / "src"), work=str(root), params=str(REPO / "params.yaml"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], env=tool_env(), capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        seconds = float(proc.stdout.split("SECONDS")[-1])
        # ru_maxrss of children is the max over all children so far: run sizes ascending.
        peak_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
        results.append((n, seconds, peak_mb))
        print(f"{n:8d} {seconds:8.1f} {n / seconds:7.1f} {peak_mb:12.0f}", flush=True)
first, last = results[0], results[-1]
print(f"time per image, {last[0]} vs {first[0]}: {last[1] / last[0] / (first[1] / first[0]):.2f}x (1.0 = linear)")
print(f"peak RSS, {last[0]} vs {first[0]}: {last[2] / first[2]:.2f}x (target <= 1.5x)")
