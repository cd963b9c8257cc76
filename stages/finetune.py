"""DVC stage 'finetune': backbone[freeze:] + trained head on images -> models/model.keras."""

import _src  # noqa: F401

from tlpipe import finetune
from tlpipe.stage import run_stage

run_stage(
    "finetune",
    lambda p: finetune.run(
        p.finetune,
        finetune.BackboneChoice(
            backbone=p.backbone, image_size=p.image_size, weights=p.weights, freeze=p.freeze, seed=p.seed,
            pooling=p.pooling,
        ),
    ),
)
