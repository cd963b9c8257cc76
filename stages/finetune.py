"""DVC stage 'finetune': backbone[freeze:] + trained head on images -> models/model.keras."""

import _src  # noqa: F401

from tlpipe.stages import main

main("finetune")
