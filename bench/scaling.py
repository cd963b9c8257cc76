"""How the whole pipeline's cost grows: 3k, 10k and 30k distinct images.

    python bench/scaling.py [3000 10000 30000]     (KERAS_HOME=../shared/keras offline)
    python bench/scaling.py --defaults 30000       (the default params' backbone; see below)

For each size: distinct photos made from cats_and_dogs_filtered's 3,000 (a
random crop of 35-100 % of the area, a mirror half the time, brightness,
contrast and saturation each scaled by 0.7-1.3, saved as 128 px JPEGs), a
fresh git+DVC repo with this checkout's pipeline and an empty cache, then

- `dvc repro` on the default params but a small backbone and image size
  (mobilenet_0.25 at 96 px, random weights: the same code paths as the
  default, in minutes rather than hours; accuracy is not the point, and the
  crops of one photo land in several splits);
- `dvc exp run -S finetune.learning_rate=...`, what a user iterates with;
- `dvc exp run -S finetune.tta=true`, an experiment whose shipped model is
  sure to change (the mirror average forced on), so the stages that score the
  shipped model (trust, evaluate, export) rerun after fine-tuning too.

With ``--defaults`` the pipeline keeps params.yaml's backbone, size and
weights (mobilenet_0.75 at 224 px, real ImageNet weights): what a user with
that many images gets, a fit ten times the small backbone's. Only the first
experiment runs then (the second would refit as long again).

Each size's folder is removed after it, unless TLPIPE_BENCH_KEEP is set (to
look into a repo of that size).

Prints each stage's seconds per 1,000 images and peak RSS (from the stage's
own "done in" line), each experiment's time beyond its fit (against the fit),
the disk the run used per image (workspace and DVC cache), and the ratios
that say whether cost is flat: per-image time and peak RSS at the largest
size against the smallest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from _common import copy_pipeline, require_keras_home, run_timed, stage_costs
from PIL import Image, ImageEnhance, ImageOps

DEFAULTS = "--defaults" in sys.argv[1:]
SIZES = [int(a) for a in sys.argv[1:] if a != "--defaults"] or [3000, 10000, 30000]
SOURCE_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
SIDE = 128  # stored photo side: decoding stays a small share, as with real photos resized for a small model
SETTINGS = {"backbone": "mobilenet_0.25", "image_size": 96, "weights": "none"}
NEW_LEARNING_RATE = 0.0002
MODEL_CHANGE = "finetune.tta=true"  # the shipped model changes whatever fine-tuning's val figures


def source_archive() -> Path:
    import keras

    return Path(keras.utils.get_file("cats_and_dogs_filtered.zip", SOURCE_URL))


def source_members(archive: Path) -> list[str]:
    """The photos in a fixed shuffled order: any size draws both classes."""
    with zipfile.ZipFile(archive) as zf:
        members = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
    return [members[i] for i in np.random.default_rng(0).permutation(len(members))]


def variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random crop, mirror and colour change of ``photo``."""
    width, height = photo.size
    area = rng.uniform(0.35, 1.0) * width * height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = int(min(width, round(np.sqrt(area * aspect))))
    h = int(min(height, round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    out = photo.crop((left, top, left + w, top + h)).resize((SIDE, SIDE), Image.BILINEAR)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(0.7, 1.3))
    return out


def _make_from(job: tuple[str, list[tuple[int, str]], int, int, Path]) -> int:
    archive, members, stride, n, folder = job
    made = 0
    with zipfile.ZipFile(archive) as zf:
        for k, member in members:
            label = "cat" if "/cats/" in member else "dog"
            with zf.open(member) as f:
                photo = Image.open(f).convert("RGB")
            # Image i is the same in every size's set: the 3k set is part of the 10k one.
            for i in range(k, n, stride):
                variant(photo, np.random.default_rng(i)).save(folder / label / f"{i:06d}.jpg", quality=90)
                made += 1
    return made


def make_photos(folder: Path, n: int, archive: Path) -> None:
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    indexed = list(enumerate(source_members(archive)))
    jobs = [(str(archive), indexed[j::64], len(indexed), n, folder) for j in range(64)]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        assert sum(pool.map(_make_from, jobs)) == n


def disk_mb(path: Path) -> float:
    """Bytes on disk (allocated blocks, so hard links and sparse files count once)."""
    seen, total = set(), 0
    for p in [path] if path.is_file() else path.rglob("*"):
        st = p.lstat()
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total / 2**20


def one_size(n: int, archive: Path, root: Path) -> dict:
    start = time.perf_counter()
    make_photos(root / "photos", n, archive)
    made = time.perf_counter() - start
    repo = copy_pipeline(root / "repo")
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    if not DEFAULTS:
        raw.update(SETTINGS)
        raw["export"]["max_accuracy_drop"] = 1.0  # a random-weight model near chance: int8's guard means nothing here
    raw["data"].update(source=str(root / "photos"), sha256=None)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_timed(["git", "commit", "-qam", f"{n} images"], repo)
    full, out = run_timed(["dvc", "repro"], repo)
    stages = stage_costs(out)
    run_timed(["git", "add", "-A"], repo)
    run_timed(["git", "-c", "user.name=bench", "-c", "user.email=bench@tlpipe.invalid", "commit", "-qm", "repro"], repo)
    exp, exp_out = run_timed(["dvc", "exp", "run", "-S", f"finetune.learning_rate={NEW_LEARNING_RATE}"], repo)
    finetune = json.loads((repo / "reports/finetune.json").read_text())
    disk = {name: disk_mb(repo / name) for name in ("data/raw", "data/features", "data/prefix", "models", ".dvc/cache")}
    workspace = disk_mb(repo) - disk[".dvc/cache"]
    result = {"n": n, "made": made, "full": full, "stages": stages, "exp": exp, "exp_stages": stage_costs(exp_out),
              "disk": disk, "workspace": workspace,
              "prefix_bytes_per_image": finetune.get("prefix_bytes_per_image", 0),
              "exp_fit": finetune.get("fit_seconds", 0.0), "exp_shipped": finetune.get("shipped"),
              "prefix_cached": finetune.get("frozen_prefix_cached")}
    if not DEFAULTS:
        changed, changed_out = run_timed(["dvc", "exp", "run", "-S", MODEL_CHANGE], repo)
        result.update(changed=changed, changed_stages=stage_costs(changed_out),
                      changed_fit=json.loads((repo / "reports/finetune.json").read_text()).get("fit_seconds", 0.0))
    return result


def report(r: dict) -> None:
    n = r["n"]
    print(f"\n{n:,} images (made in {r['made']:.0f} s): dvc repro {r['full']:.1f} s = {r['full'] / n * 1000:.2f} s per "
          f"1,000 images; exp run -S finetune.learning_rate={NEW_LEARNING_RATE} {r['exp']:.1f} s "
          f"({r['exp'] / r['full']:.0%} of repro; stages {' '.join(r['exp_stages'])})")
    beyond = r["exp"] - r["exp_fit"]
    print(f"  the experiment beyond its fit ({r['exp_fit']:.1f} s): {beyond:.1f} s = {beyond / max(r['exp_fit'], 1e-9):.0%} "
          f"of the fit (shipped: {r['exp_shipped']})")
    if "changed" in r:
        beyond = r["changed"] - r["changed_fit"]
        after = ", ".join(f"{name} {seconds:.1f} s" for name, (seconds, _) in r["changed_stages"].items())
        print(f"  exp run -S {MODEL_CHANGE} (the shipped model changes): {r['changed']:.1f} s, beyond its fit "
              f"({r['changed_fit']:.1f} s) {beyond:.1f} s = {beyond / max(r['changed_fit'], 1e-9):.0%} of the fit; {after}")
    print(f"  {'stage':12s} {'s':>8s} {'s/1k img':>9s} {'peak RSS MB':>12s}")
    for name, (seconds, peak) in r["stages"].items():
        print(f"  {name:12s} {seconds:8.1f} {seconds / n * 1000:9.2f} {peak:12,.0f}")
    print(f"  frozen prefix stored: {r['prefix_cached']}, {r['prefix_bytes_per_image']:,} bytes per image")
    per_kb = {k: v * 1024 / n for k, v in r["disk"].items()}
    print("  disk KB per image: " + ", ".join(f"{k} {v:.1f}" for k, v in per_kb.items())
          + f"; workspace {r['workspace'] * 1024 / n:.1f} + DVC cache {per_kb['.dvc/cache']:.1f}")


def main() -> None:
    require_keras_home()
    archive = source_archive()
    results = []
    for n in SIZES:
        root = Path(tempfile.mkdtemp(prefix=f"tlpipe-scale-{n}-"))
        try:
            results.append(one_size(n, archive, root))
        finally:
            if os.environ.get("TLPIPE_BENCH_KEEP"):
                print(f"kept {root} (TLPIPE_BENCH_KEEP)")
            else:
                shutil.rmtree(root, ignore_errors=True)
        report(results[-1])
    first, last = results[0], results[-1]
    if first is last:
        return
    print(f"\n{last['n']:,} vs {first['n']:,} images, per-image time (1.00 = flat) and peak RSS:")
    for name in first["stages"]:
        t0, m0 = first["stages"][name]
        t1, m1 = last["stages"][name]
        print(f"  {name:12s} time/image {t1 / last['n'] / (t0 / first['n']):5.2f}x   peak RSS {m1 / m0:5.2f}x")
    print(f"  {'dvc repro':12s} time/image {last['full'] / last['n'] / (first['full'] / first['n']):5.2f}x")
    print(f"  {'exp run':12s} time/image {last['exp'] / last['n'] / (first['exp'] / first['n']):5.2f}x")
    beyond = [(r["exp"] - r["exp_fit"]) / r["n"] for r in (first, last)]
    print(f"  {'exp beyond fit':12s} time/image {beyond[1] / beyond[0]:5.2f}x")
    if "changed" in first:
        changed = [(r["changed"] - r["changed_fit"]) / r["n"] for r in (first, last)]
        print(f"  {'model change':12s} time/image beyond fit {changed[1] / changed[0]:5.2f}x")


if __name__ == "__main__":
    main()
