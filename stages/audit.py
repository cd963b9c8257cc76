"""DVC stage 'audit': duplicates, leaks and likely label errors from the cached features -> plots/audit/."""

import _src  # noqa: F401

from tlpipe import audit
from tlpipe.stage import run_stage

run_stage("audit", lambda p: audit.run(p.audit, seed=p.seed))
