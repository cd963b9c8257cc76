"""TensorFlow's C++ start-up log kept out of what a person reads.

Every tlpipe process (each stage, ``tlpipe predict`` / ``export``, the workers)
calls ``install()`` first. Unless the user set ``TF_CPP_MIN_LOG_LEVEL`` or
``TLPIPE_VERBOSE=1``, it

- sets ``TF_CPP_MIN_LOG_LEVEL=3``: TensorFlow's runtime log (``cuInit`` on a
  machine with no GPU, ``oneDNN supports DT_HALF only on platforms with
  AVX-512``) stays quiet; a real failure still reaches tlpipe as an exception
  and ends in its one clear line;
- holds standard error while ``tensorflow`` is first imported, then writes
  back every line but TensorFlow's C++ log. absl prints those import-time
  lines (``oneDNN custom operations are on``, ``Could not find cuda drivers``)
  before its logging is initialised, where no variable reaches them.

Nothing is held after the import (but around a TFLite interpreter's first
allocation, which prints a line of its own): progress bars and errors print as
they happen.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import threading

VERBOSE = "TLPIPE_VERBOSE"
# Set beside TF_CPP_MIN_LOG_LEVEL when tlpipe chose it, so that a child process
# (a worker, the watchdog) does not take it for the user's own choice.
_OURS = "TLPIPE_QUIET_TF_LOG"
QUIET_LEVEL = "3"

# absl's line format: severity, MMDD, time (00:00:<epoch seconds> before
# absl is initialised), thread id, file:line]; fatal lines
# (F) are kept: they explain a crash.
_CPP_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-/]+:\d+\] ")
_CHATTER = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    # cpu_feature_guard's second line
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."),
    # TFLite's interpreter, as it is created (printf, no absl format)
    re.compile(r"^INFO: Created TensorFlow Lite .*delegate for CPU\.$"),
)


def is_tensorflow_log(line: str) -> bool:
    return bool(_CPP_LOG_LINE.match(line)) or any(p.match(line) for p in _CHATTER)


def without_tensorflow_log(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not is_tensorflow_log(line))


def wanted() -> bool:
    """Quiet unless the user asked for TensorFlow's log (either variable)."""
    if os.environ.get(VERBOSE, "").strip() not in ("", "0"):
        return False
    return "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get(_OURS) == "1"


def user_environment(environ) -> dict:
    """``environ`` without what ``install`` set (for a child that must decide afresh)."""
    env = dict(environ)
    if env.pop(_OURS, None) == "1":
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def install() -> None:
    """Call before anything imports TensorFlow; a no-op when the user wants its log."""
    if not wanted():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LEVEL
    os.environ[_OURS] = "1"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with a loader that imports it with standard error
    held; stands down once it is imported (a bare find_spec changes nothing)."""

    searching = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self.searching:
            return None
        self.searching = True  # the other finders locate it
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldStderrLoader(spec.loader, self)
        return spec


class _HeldStderrLoader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            with filtered_stderr():
                self.loader.exec_module(module)
        finally:
            if self.finder in sys.meta_path:
                sys.meta_path.remove(self.finder)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self.loader, name)


class filtered_stderr:
    """File descriptor 2 into a temporary file for the block (C++ writes there
    too, not to sys.stderr), then its lines back, TensorFlow's log left out.
    Also around a short step that prints start-up lines of its own (a TFLite
    interpreter's first allocation); it holds nothing when the user wants the log."""

    # fd 2 is the process's: two threads holding it at once would restore each
    # other's temporary file (export scores runtimes in threads side by side)
    _lock = threading.RLock()

    def __enter__(self):
        self.active = wanted()
        if not self.active:
            return
        self._lock.acquire()
        sys.stderr.flush()
        self.held = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.held.fileno(), 2)

    def __exit__(self, *exc):
        if not self.active:
            return False
        try:
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.held.seek(0)
            text = self.held.read().decode("utf-8", "replace")
            self.held.close()
            kept = without_tensorflow_log(text)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
        finally:
            self._lock.release()
        return False
