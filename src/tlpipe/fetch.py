"""fetch: data.source -> data/raw/ (one folder per class, predefined splits kept).

``data.source`` is an http(s) URL of an archive (downloaded through
``keras.utils.get_file``, so the Keras cache and KERAS_HOME are honoured), a
local archive, or a local folder. Archives are extracted safely: a member that
would land outside the target is refused, naming the member.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import urllib.parse
import zipfile
from pathlib import Path, PurePosixPath

from tlpipe import atomic, paths
from tlpipe.errors import TlpipeError
from tlpipe.images import is_hidden
from tlpipe.params import DataParams, archive_kind, check_source

# Folders that archivers add and that never hold a dataset.
JUNK = {"__MACOSX"}


def run(data: DataParams, target: Path = paths.RAW) -> Path:
    """Materialise the dataset under ``target`` atomically; return it. Reads ``data.*``."""
    local = check_source(data)
    with atomic.atomic_dir(target) as tmp:
        if local is None:
            _extract(_download(data.source), data.sha256, tmp)
        elif local.is_dir():
            _copy_folder(local, tmp)
        else:
            _extract(local, data.sha256, tmp)
        _unwrap(tmp)
    return target


def _download(url: str) -> Path:
    fname = os.path.basename(urllib.parse.urlsplit(url).path)
    from keras.src.backend import config  # the same KERAS_HOME logic get_file uses

    # A pre-seeded cache may be read-only, and get_file falls back to /tmp when
    # it cannot write there: look in it first, so an offline cache always works.
    cached = Path(config.keras_home()) / "datasets" / fname
    if cached.is_file():
        print(f"fetch: using cached {cached}", flush=True)
        return cached
    import keras

    try:
        return Path(keras.utils.get_file(fname=fname, origin=url, cache_subdir="datasets"))
    except Exception as err:  # get_file wraps URL errors in a bare Exception
        raise TlpipeError(
            f"Could not download data.source {url!r}: {err}. Offline? Put {fname} in a Keras "
            f"cache folder as datasets/{fname} and set KERAS_HOME to that folder "
            "(e.g. KERAS_HOME=$PWD/../shared/keras), or point 'data.source' at a local copy."
        ) from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, sha256: str | None, target: Path) -> None:
    if sha256 is not None:
        actual = sha256_of(archive)
        if actual.lower() != sha256.lower():
            raise TlpipeError(
                f"Checksum mismatch for {archive}: 'data.sha256' is {sha256} but the file's "
                f"SHA-256 is {actual}. Nothing was extracted; fix the checksum or the source."
            )
    kind = archive_kind(archive.name)
    print(f"fetch: extracting {archive}", flush=True)
    if kind == "zip":
        if not zipfile.is_zipfile(archive):
            raise TlpipeError(f"{archive} is not a zip archive, though its name says so.")
        _extract_zip(archive, target)
    else:
        try:
            with tarfile.open(archive) as tar:
                _extract_tar(tar, archive, target)
        except tarfile.ReadError as err:
            raise TlpipeError(f"{archive} is not a readable tar archive ({err}).") from None


def _check_member_name(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or (member.parts and ":" in member.parts[0]):
        raise TlpipeError(
            f"Refusing to extract {archive}: member {name!r} would land outside the target "
            "folder (absolute path or '..'). The archive is unsafe; nothing was extracted."
        )
    return member


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check everything before writing anything
            _check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
                raise TlpipeError(
                    f"Refusing to extract {archive}: member {info.filename!r} is a link or "
                    "special file, which could point outside the target. Nothing was extracted."
                )
        for info in members:
            zf.extract(info, target)


def _extract_tar(tar: tarfile.TarFile, archive: Path, target: Path) -> None:
    members = tar.getmembers()
    for m in members:  # check everything before writing anything
        _check_member_name(archive, m.name)
        if m.issym() or m.islnk() or m.isdev() or m.isfifo():
            kind = "a link" if (m.issym() or m.islnk()) else "a device or pipe"
            raise TlpipeError(
                f"Refusing to extract {archive}: member {m.name!r} is {kind}, which could "
                "reach outside the target. Nothing was extracted."
            )
    try:
        tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as err:
        raise TlpipeError(f"Refusing to extract {archive}: {err}. Nothing was kept.") from None


def _copy_folder(source: Path, target: Path) -> None:
    print(f"fetch: copying {source}", flush=True)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if is_hidden(rel) or path.is_symlink() and not path.exists():
            continue
        out = target / rel
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            try:  # a hard link is free when source and data/ share a file system
                os.link(path, out)
            except OSError:
                shutil.copy2(path, out)


def _unwrap(root: Path) -> None:
    """Hoist the contents of a single wrapping folder (cats_and_dogs_filtered/...)
    and drop archiver junk, so that root holds class or split folders."""
    for junk in JUNK:
        shutil.rmtree(root / junk, ignore_errors=True)
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in paths.RAW_SPLIT_FOLDERS:
            break
        wrapper = entries[0]
        inner = list(wrapper.iterdir())
        if not any(p.is_dir() for p in inner):
            break  # a single class folder: keep it (split will call it out)
        staging = root / f".unwrap-{os.getpid()}"
        wrapper.rename(staging)
        for child in staging.iterdir():
            child.rename(root / child.name)
        staging.rmdir()
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise TlpipeError("The data source is empty: no class folders found.")
