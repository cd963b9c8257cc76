"""DVC stage 'train_head': a classifier head on cached features -> models/head.keras."""

import _src  # noqa: F401

from tlpipe.stages import main

main("train_head")
