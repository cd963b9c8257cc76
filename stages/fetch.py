"""DVC stage 'fetch': data.source -> data/raw/ (one folder per class; split folders kept)."""

import _src  # noqa: F401

from tlpipe.stages import main

main("fetch")
