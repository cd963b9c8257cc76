"""DVC stage 'evaluate': test split only -> reports/ and metrics/eval.json, plots/."""

import _src  # noqa: F401

from tlpipe import evaluate
from tlpipe.stage import run_stage

run_stage("evaluate", lambda p: evaluate.run(p.evaluate))
