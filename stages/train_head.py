"""DVC stage 'train_head': a classifier head on cached features -> models/head.keras."""

import _src  # noqa: F401

from tlpipe import train_head
from tlpipe.stage import run_stage

run_stage("train_head", lambda p: train_head.run(p.head, seed=p.seed))
