"""DVC stage 'scratch' (opt-in): a small CNN from scratch, the baseline -> metrics/scratch.json."""

import _src  # noqa: F401

from tlpipe.stages import main

main("scratch")
