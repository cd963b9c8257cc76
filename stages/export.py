"""DVC stage 'export': the shipped model as export.formats -> models/export/, metrics/export.json."""

import _src  # noqa: F401

from tlpipe import export
from tlpipe.stage import run_stage

run_stage("export", lambda p: export.run(p.export, seed=p.seed))
