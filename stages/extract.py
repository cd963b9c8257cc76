"""DVC stage 'extract': every split through the frozen backbone once -> data/features/."""

import _src  # noqa: F401

from tlpipe.stages import main

main("extract")
