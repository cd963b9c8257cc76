"""DVC stage 'scratch' (opt-in): a small CNN from scratch, the baseline -> reports/ and metrics/scratch.json."""

import _src  # noqa: F401

from tlpipe import scratch
from tlpipe.stage import run_stage

run_stage(
    "scratch",
    lambda p: scratch.run(p.scratch, image_size=p.image_size, seed=p.seed, top_k=p.evaluate.top_k),
)
