"""Atomic outputs: write beside the target under a temporary name, then rename.

An interrupted stage (Ctrl-C, ``kill -9``, a full disk) therefore never leaves
a half-written file or folder under its final name; at worst the final name is
missing and DVC reruns the stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_leftovers(target: Path) -> None:
    """Delete temporaries that a killed earlier run left beside ``target``."""
    for stale in target.parent.glob(f".{target.name}.*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.old"):
        shutil.rmtree(stale, ignore_errors=True)


def _temp_name(target: Path, suffix: str = "") -> Path:
    # Same folder as the target, so the final rename stays on one file system.
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``target`` on success.

    ``suffix`` keeps an extension that a writer insists on (Keras wants
    ``.keras``, NumPy ``.npy``).
    """
    target = Path(target)
    tmp = _temp_name(target, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: Path | str, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _renumber_shared_objects(config: Any) -> Any:
    """Keras writes ``shared_object_id`` as Python object ids (they change from
    process to process); number them 1, 2, ... in order of appearance instead.
    Loading only matches equal ids, so the model is the same."""
    ids: dict[Any, int] = {}

    def walk(node):
        if isinstance(node, dict):
            return {
                k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(config)


def save_keras(target: Path | str, model) -> None:
    """``model.save``, made reproducible: Keras stamps the save date and the
    weights' zip time into the file, and object ids into its config; without
    them the same model gives the same bytes, so DVC sees a retrained but
    identical model as unchanged and reruns nothing after it."""
    import zipfile

    with tempfile.TemporaryDirectory() as scratch, atomic_path(target, ".keras") as tmp:
        saved = Path(scratch) / "model.keras"
        model.save(saved)
        with zipfile.ZipFile(saved) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
                if info.filename == "metadata.json":
                    metadata = json.loads(src.read(info))
                    metadata.pop("date_saved", None)
                    dst.writestr(fixed, json.dumps(metadata))
                    continue
                if info.filename == "config.json":
                    dst.writestr(fixed, json.dumps(_renumber_shared_objects(json.loads(src.read(info)))))
                    continue
                large = info.file_size >= zipfile.ZIP64_LIMIT
                with src.open(info) as fin, dst.open(fixed, "w", force_zip64=large) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)


@contextlib.contextmanager
def scratch_beside(target: Path | str) -> Iterator[Path]:
    """A temporary folder beside ``target`` (on its file system, not in a
    RAM-backed /tmp) for working files too large for memory; removed on
    exit, and, if a killed run left it, by the next write of ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces the folder ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get normal permissions
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_of(path: Path | str) -> str:
    """A file's SHA-256, read a block at a time (an archive or a model of any size)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def size_text(n: float) -> str:
    """A number of bytes as messages show it: GB, MB or kB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def free_bytes(where: Path | str) -> int:
    """Free space on the file system of ``where`` (its nearest existing parent)."""
    where = Path(where).absolute()
    while not where.exists():
        where = where.parent
    return shutil.disk_usage(where).free


def require_space(where: Path | str, needed: float, what: str, way_out: str = "") -> None:
    """Stop before writing when the estimate of what a stage writes does not
    fit: one line with the path, both sizes and the way out."""
    free = free_bytes(where)
    if needed > free:
        from tlpipe.errors import TlpipeError

        raise TlpipeError(f"{what} need {size_text(needed)} in {where}, and {size_text(free)} are free there; "
                          f"free {size_text(needed - free)} or more{way_out} and run `dvc repro` again.")


def out_of_space(err: BaseException) -> OSError | None:
    """The ENOSPC (or quota) error behind ``err``, if a full disk is what failed."""
    import errno

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None
