"""Resuming an interrupted stage: what a killed or preempted run leaves for the next.

A long stage (extract over many images, fine-tuning for hours on a rented
GPU) saves its progress as it goes into ``.tlpipe/resume/<stage>/``: outside
DVC's outputs (DVC removes those before it reruns a stage), ignored by git
and by DVC. ``dvc repro`` after a ``kill -9``, a preemption's SIGTERM or a
crash then continues where the run stopped; the folder goes when the stage
completes.

A checkpoint is used only by a run of the same stage on the same inputs: its
``key`` hashes the stage's params values and every dependency dvc.yaml lists
for it (code, data, models), read the way DVC would see them. Each file of a
checkpoint is recorded with its size and SHA-256 in ``manifest.json``, written
last; a checkpoint of other inputs, or one with a file missing, truncated or
changed, is removed with one line and never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import yaml

from tlpipe import atomic, paths

# Bumped when what a checkpoint holds changes: an older one is then not read.
FORMAT = 1
MANIFEST = "manifest.json"
# Dependency files up to this size are hashed whole; larger ones (a stored
# frozen prefix of gigabytes) by their size and SAMPLES blocks spread over
# them, so that keying a checkpoint costs a second, not a read of the data.
# They are outputs of earlier stages whose own inputs are hashed whole.
WHOLE_FILE_BYTES = 64 * 2**20
SAMPLES, SAMPLE_BYTES = 16, 2**20
PREEMPTED = 143  # 128 + SIGTERM, as shells report it


def folder(stage: str) -> Path:
    return paths.RESUME / stage


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return
        for i in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
            digest.update(f.read(SAMPLE_BYTES))


def interpolated(text: str, params: dict) -> str:
    """dvc.yaml's ``${a.b}``, as DVC fills it in from params.yaml."""

    def value(match):
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", value, text)


def _param_value(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def stage_key(stage: str, dvc_yaml: Path = Path("dvc.yaml"), params_file: Path = paths.PARAMS) -> str | None:
    """SHA-256 over what ``stage`` depends on, as dvc.yaml declares it: the
    values of its params and the contents of its dependencies (every file
    under a folder, by relative path). None outside a pipeline (no dvc.yaml
    declaring the stage: stage code called directly), where nothing resumes."""
    if not dvc_yaml.is_file() or not params_file.is_file():
        return None
    declared = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get(stage)
    if declared is None:
        return None
    params = yaml.safe_load(params_file.read_text()) or {}
    digest = hashlib.sha256(f"tlpipe resume {FORMAT} {stage}\0".encode())
    for key in declared.get("params", []):
        digest.update(f"param {key}={json.dumps(_param_value(params, key), sort_keys=True)}\0".encode())
    for dep in declared.get("deps", []):
        dep = Path(interpolated(dep, params))
        files = sorted(p for p in dep.rglob("*") if p.is_file()) if dep.is_dir() else [dep]
        for file in files:
            digest.update(f"dep {file.as_posix()}\0".encode())
            if file.is_file():
                _file_digest(file, digest)
    return digest.hexdigest()


def _manifest(where: Path) -> dict:
    return {p.relative_to(where).as_posix(): {"bytes": p.stat().st_size, "sha256": atomic.sha256_of(p)}
            for p in sorted(where.rglob("*")) if p.is_file() and p.name != MANIFEST}


def seal(where: Path, key: str, **state) -> None:
    """Record what ``where`` holds (each file's size and SHA-256) and the
    state it resumes from, last: a checkpoint is complete once sealed."""
    atomic.write_json(where / MANIFEST, {"format": FORMAT, "key": key, "state": state, "files": _manifest(where)})


def problem(where: Path, key: str) -> str:
    """Why the checkpoint in ``where`` must not be used ("" when it may)."""
    try:
        manifest = json.loads((where / MANIFEST).read_text())
    except (OSError, ValueError):
        return "it was never completed (no readable manifest)"
    if manifest.get("format") != FORMAT:
        return "it was written by another version of tlpipe"
    if manifest.get("key") != key:
        return "it was made with other params, data or code"
    for name, recorded in manifest.get("files", {}).items():
        file = where / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != recorded["bytes"]:
            return f"{name} is truncated ({file.stat().st_size} of {recorded['bytes']} bytes)"
        if atomic.sha256_of(file) != recorded["sha256"]:
            return f"{name} has changed since it was written"
    return ""


def state(where: Path) -> dict:
    return json.loads((where / MANIFEST).read_text())["state"]


def discard(stage: str, where: Path, why: str) -> None:
    print(f"{stage}: ignoring the checkpoint in {where}: {why}; removed, starting afresh", flush=True)
    shutil.rmtree(where, ignore_errors=True)


def usable(stage: str, where: Path, key: str) -> bool:
    """Whether ``where`` holds a checkpoint this run may resume from; a bad
    one is removed with one line."""
    if not where.exists():
        return False
    why = problem(where, key)
    if why:
        discard(stage, where, why)
        return False
    return True


def finished(where: Path) -> None:
    """The stage's outputs are in place: its checkpoint has served."""
    shutil.rmtree(where, ignore_errors=True)
    try:
        where.parent.rmdir()  # .tlpipe/resume, when no other stage has one
        where.parent.parent.rmdir()
    except OSError:
        pass


class Preemption:
    """SIGTERM (what cloud preemption and ``kill`` send) asks the stage to stop
    at its next safe point: ``requested`` turns true and the stage saves and
    calls ``stop``. Outside ``armed`` code (nothing to save yet, or outputs
    being written under temporary names) it stops at once."""

    def __init__(self, stage: str):
        self.stage, self.requested, self.armed = stage, False, False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (a test calling stage code): no handler
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame):
        self.requested = True
        if not self.armed:
            self.stop("nothing half-written was kept; `dvc repro` resumes from the last checkpoint")

    def stop(self, what: str) -> None:
        import sys

        print(f"{self.stage}: stopped by SIGTERM: {what}.", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(PREEMPTED)
