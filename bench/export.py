"""What each deployment format scores and costs, from the export stage itself.

    python bench/export.py [REPO]    (REPO: a repository after `dvc repro`; default: a
                                      fresh copy of the pipeline on the default params)

Runs the export stage's own script in REPO (every format of export.formats,
each scored on the test split in its own runtime) and, in the same run, one
decode + forward pass of the test split through the Keras model with plain
tf.data and all cores. Prints the stage's wall time as a multiple of that
pass, and metrics/export.json as the README's Deploy table.
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


def main() -> None:
    repo = repo_from_argv("export", "evaluate")
    one_pass = float(subprocess.run([sys.executable, "-c", PASS], cwd=repo, env=tool_env(), check=True,
                                    capture_output=True, text=True).stdout.split()[-1])
    start = time.perf_counter()
    subprocess.run([sys.executable, "stages/export.py"], cwd=repo, env=tool_env(), check=True,
                   capture_output=True, text=True)
    stage = time.perf_counter() - start
    results = json.loads((repo / "metrics" / "export.json").read_text())
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


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
