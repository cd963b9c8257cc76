"""Running one DVC stage: read and validate params.yaml, call the stage's code
with the params it reads, report.

User mistakes (bad params, bad data) end the stage with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tlpipe import params
from tlpipe.errors import TlpipeError


def run_stage(name: str, body: Callable[[params.Params], object]) -> None:
    """``body`` receives the whole validated params (a typo anywhere stops every
    stage) and hands its stage's code exactly the keys dvc.yaml lists for it."""
    start = time.perf_counter()
    try:
        body(params.load())
    except TlpipeError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{name}: done in {time.perf_counter() - start:.1f}s", flush=True)
