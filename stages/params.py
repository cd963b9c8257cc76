"""DVC stage 'params': params.yaml validated before any stage works -> data/params.ok."""

import _src  # noqa: F401

from tlpipe import params
from tlpipe.stage import run_stage

run_stage("params", lambda p: params.gate(p))
