"""The stored-prefix path on a small memory budget: fine-tuning reads the
frozen prefix from disk batch by batch.

    python bench/prefix_stream.py [REPO]    (REPO: a repository after `dvc repro`; default: a
                                             fresh copy of the pipeline on the default params)

Runs the finetune stage's own script twice in REPO under /usr/bin/time -v,
one after the other: with the whole stored prefix loaded into memory first
(the reference issue 25 measures against; `load_prefix` swapped for
`np.load` in that process alone), and as the stage reads it, from disk a batch
at a time, with TLPIPE_MEMORY_BUDGET=100000000 (a quarter of the cats vs dogs
prefix). Prints, for each: whether it stayed on the stored prefix, Keras fit
seconds, the stage's wall seconds and its peak RSS, the fit against the
in-memory run's, and the prefix's size on disk.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from _common import repo_from_argv, tool_env


# The finetune stage's script with the stored prefix loaded whole into memory.
IN_MEMORY = """
import runpy, sys
import numpy as np
sys.path[:0] = ["stages", "src"]
from tlpipe import finetune, paths
finetune.load_prefix = lambda split: np.load(paths.prefix_file(split, paths.PREFIX))
runpy.run_path("stages/finetune.py", run_name="__main__")
"""


def finetune_once(repo: Path, env: dict, in_memory: bool) -> dict:
    script = ["-c", IN_MEMORY] if in_memory else ["stages/finetune.py"]
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, *script], cwd=repo,
                          env={**tool_env(), **env}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    ft = json.loads((repo / "reports/finetune.json").read_text())
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return {"cached": ft["frozen_prefix_cached"], "fit": ft["fit_seconds"], "wall": seconds,
            "rss_gb": rss_kb / 1e6, "val_loss": ft["val_loss"], "shipped": ft["shipped"]}


def main() -> None:
    repo = repo_from_argv("prefix", "train_head")
    prefix_bytes = sum(p.stat().st_size for p in (repo / "data" / "prefix").glob("*.npy"))
    print(f"data/prefix: {prefix_bytes / 1e6:.0f} MB on disk")
    reference = None
    for label, env, in_memory in (("prefix loaded into memory", {}, True),
                                  ("from disk, TLPIPE_MEMORY_BUDGET=1e8", {"TLPIPE_MEMORY_BUDGET": "100000000"}, False)):
        r = finetune_once(repo, env, in_memory)
        reference = reference or r["fit"]
        print(f"{label:36s} frozen_prefix_cached {r['cached']}  fit {r['fit']:.1f} s ({r['fit'] / reference:.2f}x)  "
              f"stage wall {r['wall']:.1f} s  peak RSS {r['rss_gb']:.2f} GB  (shipped {r['shipped']}, "
              f"val loss {r['val_loss']})", flush=True)


if __name__ == "__main__":
    main()
