"""The stored-prefix path on a small memory budget: fine-tuning reads the
frozen prefix from disk batch by batch.

    python bench/prefix_stream.py [REPO]    (REPO: a repository after `dvc repro`; default: a
                                             fresh copy of the pipeline on the default params)

Runs the finetune stage's own script twice in REPO under /usr/bin/time -v:
with the default memory budget and with TLPIPE_MEMORY_BUDGET=100000000 (a
quarter of the cats vs dogs prefix). Prints, for each: whether it stayed on the
stored prefix, Keras fit seconds, the stage's wall seconds and its peak RSS,
and the prefix's size on disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from _common import repo_from_argv, tool_env


def finetune_once(repo: Path, env: dict) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "stages/finetune.py"], cwd=repo,
                          env={**tool_env(), **env}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    ft = json.loads((repo / "metrics/finetune.json").read_text())
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return {"cached": ft["frozen_prefix_cached"], "fit": ft["fit_seconds"], "wall": seconds,
            "rss_gb": rss_kb / 1e6, "val_loss": ft["val_loss"], "shipped": ft["shipped"]}


def main() -> None:
    repo = repo_from_argv("prefix", "train_head")
    prefix_bytes = sum(p.stat().st_size for p in (repo / "data" / "prefix").glob("*.npy"))
    print(f"data/prefix: {prefix_bytes / 1e6:.0f} MB on disk")
    for label, env in (("default budget", {}), ("TLPIPE_MEMORY_BUDGET=100000000", {"TLPIPE_MEMORY_BUDGET": "100000000"})):
        r = finetune_once(repo, env)
        print(f"{label:32s} frozen_prefix_cached {r['cached']}  fit {r['fit']:.1f} s  stage wall {r['wall']:.1f} s  "
              f"peak RSS {r['rss_gb']:.2f} GB  (shipped {r['shipped']}, val loss {r['val_loss']})", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
