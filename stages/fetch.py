"""DVC stage 'fetch': data.source -> data/raw/ (one folder per class; split folders kept)."""

import _src  # noqa: F401

from tlpipe import fetch
from tlpipe.params import DataParams
from tlpipe.stage import run_stage

# data.labels is split's: changing it must not fetch the source again.
run_stage("fetch", lambda p: fetch.run(DataParams(source=p.data.source, sha256=p.data.sha256)))
