"""What each DVC stage does, in a few lines each; ``stages/*.py`` call ``main``.

User mistakes (bad params, bad data) end the stage with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from tlpipe import params as params_module
from tlpipe.errors import TlpipeError
from tlpipe.params import Params


def fetch(p: Params) -> None:
    from tlpipe.fetch import fetch as run

    run(p.data)


def split(p: Params) -> None:
    from tlpipe.split import run

    run(p.split, p.seed)


def extract(p: Params) -> None:
    from tlpipe.extract import run

    run(p)


def train_head(p: Params) -> None:
    from tlpipe.head import run

    run(p)


def finetune(p: Params) -> None:
    from tlpipe.finetune import run

    run(p)


def evaluate(p: Params) -> None:
    from tlpipe.evaluate import run

    run(p)


def scratch(p: Params) -> None:
    from tlpipe.scratch import run

    run(p)


STAGES: dict[str, Callable[[Params], None]] = {
    "fetch": fetch,
    "split": split,
    "extract": extract,
    "train_head": train_head,
    "finetune": finetune,
    "evaluate": evaluate,
    "scratch": scratch,
}


def quiet_tensorflow() -> None:
    # TF's C++ start-up chatter hides the progress lines people need to see.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(name: str) -> None:
    quiet_tensorflow()
    start = time.perf_counter()
    try:
        STAGES[name](params_module.load())
    except TlpipeError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{name}: done in {time.perf_counter() - start:.1f}s", flush=True)
