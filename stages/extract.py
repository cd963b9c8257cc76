"""DVC stage 'extract': every split through the frozen backbone once -> data/features/."""

import _src  # noqa: F401

from tlpipe import extract
from tlpipe.stage import run_stage

run_stage(
    "extract",
    lambda p: extract.run(
        p.extract, backbone=p.backbone, image_size=p.image_size, weights=p.weights, seed=p.seed, freeze_word=p.freeze,
        pooling=p.pooling,
    ),
)
