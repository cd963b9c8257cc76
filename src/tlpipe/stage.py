"""Running one DVC stage: read and validate params.yaml, call the stage's code
with the params it reads, report.

User mistakes (bad params, bad data) end the stage with one line on stderr and
exit status 2, never a traceback, and so does a full disk (naming the path, the
sizes where they can be estimated, and the way out); Ctrl-C ends it with exit
status 130.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tlpipe import atomic, params
from tlpipe.errors import TlpipeError


def _process_seconds() -> float:
    """Wall time since this process started: imports and start-up included."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil comes with DVC; without it, time since this module loaded
        return time.perf_counter() - _LOADED


def _peak_memory_mb() -> float:
    """This process's peak resident memory. On Linux, VmHWM: getrusage's
    figure is carried over from the parent across fork and exec, so a stage
    started by a large process would report that process's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # macOS reports bytes, Linux KiB


_LOADED = time.perf_counter()
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def run_stage(name: str, body: Callable[[params.Params], object]) -> None:
    """``body`` receives the whole validated params (a typo anywhere stops every
    stage) and hands its stage's code exactly the keys dvc.yaml lists for it."""
    try:
        body(params.load())
    except TlpipeError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # h5py and TensorFlow wrap the OSError of a full disk in their own types
        full = atomic.out_of_space(err)
        if full is None:
            raise
        where = full.filename or "."
        free_mb = atomic.free_bytes(where) / 1e6
        print(f"{name}: error: the disk is full: writing {where} failed ({free_mb:.1f} MB free there). Free some "
              "space (`dvc gc --workspace` drops cached outputs no commit uses) and run `dvc repro` again; "
              "nothing half-written was kept.", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Every output is written under a temporary name (tlpipe.atomic), and
        # the unwinding that brought us here removed those: nothing to report
        # but that. Exit at once, 128 + SIGINT as shells do: waiting for
        # TensorFlow's and the decoders' threads to wind down would take seconds.
        print(f"{name}: interrupted (Ctrl-C); nothing half-written was kept. `dvc repro` continues from here.",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(INTERRUPTED)
    print(f"{name}: done in {_process_seconds():.1f}s (process wall time, start-up included), "
          f"peak memory {_peak_memory_mb():,.0f} MB", flush=True)
    if not os.environ.get("TF_CONFIG"):
        # Every output is written and closed: skip the interpreter's teardown,
        # which waits on library threads (about a second for TensorFlow's).
        # A task of a cluster exits normally, so that TensorFlow's coordination
        # service shuts down in step with the other tasks.
        sys.stderr.flush()
        os._exit(0)
