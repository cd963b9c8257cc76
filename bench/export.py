"""What each deployment format scores and costs, from the export stage itself.

    python bench/export.py [REPO]    (REPO: a repository after `dvc repro`; default: a
                                      fresh copy of the pipeline on the default params)

Runs the export stage's own script in REPO (every format of export.formats,
each scored on the test split in its own runtime) and, in the same run, one
decode + forward pass of the test split through the Keras model with plain
tf.data and all cores. Prints the stage's wall time as a multiple of that
pass, and reports/export.json as the docs' Deploy table. Then what
scoring alone costs (the stage's floor on this machine): each runtime
classifying every test image by itself, in the stage's batches on one
thread, in ms per image; their sum over the machine's cores (no schedule
can beat it) and the longest of export.scoring_lanes' lanes (the stage's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import repo_from_argv, tool_env

PASS = """
import sys, time
sys.path.insert(0, "src")
from tlpipe import images
from tlpipe.artifacts import read_split, sources
from tlpipe.layers import load_model
model = load_model("models/model.keras")
rows = read_split("test")
start = time.perf_counter()
for _ in images.predict(model, *sources(rows), int(model.input_shape[1]), 64):
    pass
print(time.perf_counter() - start)
"""

# Each runtime alone over every test image, as score_runtimes feeds them; the
# decoded batches are made first, so that decoding is not counted.
SCORING = """
import json, sys, time
sys.path.insert(0, "src")
from tlpipe import export, paths, runtimes
export._one_thread()
from tlpipe.artifacts import read_split
from tlpipe.params import load
rows = read_split("test")
opened = {"keras": runtimes.open_model(paths.MODEL, threads=1)}
opened.update({f: runtimes.open_model(export.artifact_path(f), threads=1) for f in load("params.yaml").export.formats})
batches = list(export.pixel_batches(rows, opened["keras"].image_size, export.SCORING_BATCH))
ms = {}
for name, runtime in opened.items():
    runtime(batches[0])
    start = time.perf_counter()
    for x in batches:
        runtime(x)
    ms[name] = 1000 * (time.perf_counter() - start) / len(rows)
print(json.dumps({"ms": ms, "lanes": export.scoring_lanes(opened), "images": len(rows),
                  "batch": export.SCORING_BATCH}))
"""


def scoring_floor(repo) -> None:
    """Prints each runtime's scoring cost alone and what it implies for the stage."""
    out = subprocess.run([sys.executable, "-c", SCORING], cwd=repo, env=tool_env(), check=True,
                         capture_output=True, text=True).stdout.splitlines()[-1]
    figures = json.loads(out)
    ms, n, cores = figures["ms"], figures["images"], os.cpu_count() or 1
    print(f"scoring alone, {n} test images, batches of {figures['batch']}, one thread each (ms per image):")
    for name, value in ms.items():
        print(f"  {name:15s} {value:7.2f}")
    lanes = [sum(ms[name] for name in lane) for lane in figures["lanes"]]
    print(f"  all runtimes: {sum(ms.values()) * n / 1000:.1f} core-s; over {cores} cores at best "
          f"{sum(ms.values()) * n / 1000 / cores:.1f} s; the stage's lanes {figures['lanes']}: "
          f"{max(lanes) * n / 1000:.1f} s")


def main() -> None:
    repo = repo_from_argv("export", "evaluate")
    one_pass = float(subprocess.run([sys.executable, "-c", PASS], cwd=repo, env=tool_env(), check=True,
                                    capture_output=True, text=True).stdout.split()[-1])
    start = time.perf_counter()
    subprocess.run([sys.executable, "stages/export.py"], cwd=repo, env=tool_env(), check=True,
                   capture_output=True, text=True)
    stage = time.perf_counter() - start
    results = json.loads((repo / "reports" / "export.json").read_text())
    shipped = results.pop("shipped")
    print(f"export stage: {stage:.1f} s wall = {stage / one_pass:.1f}x one decode + forward pass of the "
          f"{shipped['test_images']} test images ({one_pass:.1f} s, Keras, all cores), same run")
    print(f"shipped model: mirror average {shipped['mirror_average']}, temperature {shipped['temperature']}")
    print("| format | test accuracy | agreement with Keras | macro F1 | size (MB) | ms per image (1 thread, batch 1) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for fmt, r in results.items():
        agree = f"{r['agreement']:.4f}" if "agreement" in r else "(reference)"
        print(f"| `{fmt}` | {r['accuracy']:.4f} | {agree} | {r['f1_macro']:.4f} | {r['bytes'] / 1e6:.2f} | "
              f"{r['ms_per_image']:.1f} |")
    scoring_floor(repo)


if __name__ == "__main__":
    main()
