"""DVC stage 'fetch': data.source -> data/raw/ (one folder per class; split folders kept)."""

import _src  # noqa: F401

from tlpipe import fetch
from tlpipe.stage import run_stage

run_stage("fetch", lambda p: fetch.run(p.data))
