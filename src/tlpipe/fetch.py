"""fetch: data.source -> data/raw/ (one folder per class, predefined splits kept).

``data.source`` is an http(s) URL of an archive, a local archive, a local
folder, or a dataset catalog (``keras:cifar10``, ``tfds:stl10``: see
tlpipe.catalogs). A URL is downloaded into the Keras cache (``$KERAS_HOME/datasets``,
as ``keras.utils.get_file`` would), so a pre-seeded cache works offline.

Nothing unverified is trusted: a download goes to a temporary name, is checked
(a readable archive of its kind, the checksum when given, the announced
length) and only then renamed into the cache; a cached file that is not a
valid archive is downloaded again. Archives are checked whole before anything
is written: a member that would land outside the target, a link or device, two
members of one name, or a member (or total) that inflates past sane bounds is
refused by name, and a corrupt member ends in one clear line.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tlpipe import atomic, catalogs, paths
from tlpipe.artifacts import csv_text
from tlpipe.errors import TlpipeError
from tlpipe.images import is_hidden
from tlpipe.data_source import archive_kind, local_source
from tlpipe.params import DataParams

# Folders that archivers add and that never hold a dataset.
JUNK = {"__MACOSX"}
# Zip-bomb bounds: what an archive may inflate to, in all and per member
# (photos barely compress; a 200:1 member of a megabyte or more is no dataset).
MAX_UNCOMPRESSED_BYTES = 100 * 1024**3
MAX_RATIO = 200
RATIO_CHECK_FROM_BYTES = 1024**2


def run(data: DataParams, target: Path = paths.RAW) -> Path:
    """Materialise the dataset under ``target`` atomically; return it. Reads ``data.*``."""
    local = local_source(data.source, data.sha256)
    with atomic.atomic_dir(target) as tmp:
        if catalogs.is_catalog(data.source):
            catalogs.fetch(data.source, tmp)
        elif local is None:
            _extract(_download(data.source, data.sha256), data.sha256, tmp)
        elif local.is_dir():
            _copy_folder(local, tmp)
        else:
            _extract(local, data.sha256, tmp)
        _unwrap(tmp)
    return target


# ---------------------------------------------------------------- download


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable archive of the kind its name says, or None.

    Reads a zip's whole directory and a tar's every header (through the whole
    compressed stream), so a file cut off anywhere is caught."""
    try:
        if archive_kind(path.name) == "zip":
            if not zipfile.is_zipfile(path):
                return "not a zip archive"
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
        else:
            with tarfile.open(path) as tar:
                tar.getmembers()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as err:
        return f"not a readable archive: {err}"
    return None


def _download(url: str, sha256: str | None) -> Path:
    fname = os.path.basename(urllib.parse.urlsplit(url).path)
    cached = paths.keras_datasets() / fname
    writable = _writable(cached.parent)
    if cached.is_file():
        problem = archive_problem(cached)
        if problem is None:
            print(f"fetch: using cached {cached}", flush=True)
            return cached
        if not writable:
            raise TlpipeError(
                f"The cached download {cached} is {problem}, and its folder is read-only. "
                f"Delete it (rm {cached}) or point KERAS_HOME at a writable cache, then rerun."
            )
        print(f"fetch: the cached {cached} is {problem}; downloading it again", flush=True)
    # A read-only cache (read above) falls back to Keras' own /tmp/.keras.
    folder = cached.parent if writable else Path("/tmp/.keras/datasets")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / fname
    # Downloaded under a temporary name and checked before the rename: an
    # interrupted or bad download never sits in the cache under the real name.
    with atomic.atomic_path(target, suffix="".join(Path(fname).suffixes[-2:])) as tmp:
        _stream(url, tmp, fname)
        problem = archive_problem(tmp)
        if problem:
            raise TlpipeError(
                f"The download of data.source {url!r} is {problem} (an error page, or a cut-off "
                "transfer?). Nothing was cached; check the URL and rerun."
            )
        actual = atomic.sha256_of(tmp) if sha256 else None
        if sha256 and actual != sha256.lower():
            raise TlpipeError(
                f"The download of data.source {url!r} has SHA-256 {actual}, not 'data.sha256' "
                f"{sha256}. Nothing was cached; fix the checksum or the source."
            )
    print(f"fetch: downloaded {target}", flush=True)
    return target


def _stream(url: str, out: Path, fname: str) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(out, "wb") as f:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc="fetch: downloading", mininterval=1) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
    except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts, refused connections
        raise TlpipeError(
            f"Could not download data.source {url!r}: {err}. Offline? Put {fname} in a Keras cache "
            f"folder as datasets/{fname} and set KERAS_HOME to that folder "
            "(e.g. KERAS_HOME=$PWD/../shared/keras), or point 'data.source' at a local copy."
        ) from None
    if total is not None and done != total:
        raise TlpipeError(
            f"The download of data.source {url!r} stopped after {done:,} of {total:,} bytes. "
            "Nothing was cached; rerun to try again."
        )


# ---------------------------------------------------------------- archives


def _extract(archive: Path, sha256: str | None, target: Path) -> None:
    if sha256 is not None:
        actual = atomic.sha256_of(archive)
        if actual.lower() != sha256.lower():
            raise TlpipeError(
                f"Checksum mismatch for {archive}: 'data.sha256' is {sha256} but the file's "
                f"SHA-256 is {actual}. Nothing was extracted; fix the checksum or the source."
            )
    print(f"fetch: extracting {archive}", flush=True)
    if archive_kind(archive.name) == "zip":
        if not zipfile.is_zipfile(archive):
            raise TlpipeError(f"{archive} is not a zip archive, though its name says so.")
        _extract_zip(archive, target)
    else:
        try:
            with tarfile.open(archive) as tar:
                _extract_tar(tar, archive, target)
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise TlpipeError(
                f"{archive} is not a readable tar archive ({err}): truncated or corrupt? "
                "Nothing was extracted."
            ) from None


def _refuse(archive: Path, member: str, why: str) -> TlpipeError:
    return TlpipeError(f"Refusing to extract {archive}: member {member!r} {why}. Nothing was extracted.")


def _check_member_name(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or (member.parts and ":" in member.parts[0]):
        raise _refuse(archive, name, "would land outside the target folder (absolute path or '..'); "
                                     "the archive is unsafe")
    return member


def _check_sizes(archive: Path, members: list[tuple[str, int, int | None]], target: Path) -> None:
    """Zip-bomb bounds over (name, uncompressed size, compressed size or None):
    each member's ratio, then the whole archive's (many members each under the
    first check's floor add up) and the free space where it would land."""
    total = 0
    for name, size, packed in members:
        total += size
        if packed is not None and size >= RATIO_CHECK_FROM_BYTES and size > MAX_RATIO * max(packed, 1):
            raise _refuse(archive, name, f"inflates {size / max(packed, 1):,.0f}:1 ({size:,} bytes), beyond "
                                         f"the {MAX_RATIO}:1 a dataset file needs (a zip bomb?)")
        if total > MAX_UNCOMPRESSED_BYTES:
            raise _refuse(archive, name, f"takes the archive past {MAX_UNCOMPRESSED_BYTES / 1024**3:.0f} GiB "
                                         "uncompressed (a zip bomb?); extract it yourself and use the folder")
    packed_total = max(archive.stat().st_size, 1)
    if total >= RATIO_CHECK_FROM_BYTES and total > MAX_RATIO * packed_total:
        raise TlpipeError(
            f"Refusing to extract {archive}: its {len(members):,} files declare {atomic.size_text(total)} "
            f"uncompressed from {atomic.size_text(packed_total)} packed ({total / packed_total:,.0f}:1, beyond "
            f"the {MAX_RATIO}:1 a dataset needs: a zip bomb?). Nothing was extracted.")
    atomic.require_space(target.parent, total, f"Refusing to extract {archive}: its files",
                         " (nothing was extracted)")


def _check_unique(archive: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        key = name.replace("\\", "/").rstrip("/")
        if key in seen:
            raise _refuse(archive, name, "appears twice: which copy is the data is ambiguous")
        seen.add(key)


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check everything before writing anything
            _check_member_name(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)
            # No type bits (Python's ZipFile.writestr, many Windows tools): a plain file.
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(archive, info.filename, "is a link or special file, which could point "
                                                      "outside the target")
        _check_unique(archive, [i.filename for i in members])
        _check_sizes(archive, [(i.filename, i.file_size, i.compress_size) for i in members if not i.is_dir()],
                     target)
        for info in members:
            out = target / _check_member_name(archive, info.filename)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(out, "wb") as dst:
                    _copy_bounded(src, dst, info.file_size, archive, info.filename)
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise TlpipeError(
                    f"{archive} is corrupt: member {info.filename!r} cannot be read ({err}). "
                    "Nothing was extracted; download the archive again."
                ) from None


def _copy_bounded(src, dst, declared: int, archive: Path, name: str) -> None:
    """Copy, refusing a member that inflates past the size its header declared."""
    done = 0
    for block in iter(lambda: src.read(1 << 20), b""):
        done += len(block)
        if done > declared:
            raise _refuse(archive, name, f"inflates past its declared {declared:,} bytes (a zip bomb?)")
        dst.write(block)


def _extract_tar(tar: tarfile.TarFile, archive: Path, target: Path) -> None:
    members = tar.getmembers()  # reads every header: a truncated archive fails here, before writing
    # tarfile keeps undecodable name bytes as surrogates; such a file is listed, never extracted.
    rejected = [(shown_name(m.name), NOT_UTF8) for m in members if m.isfile() and not is_utf8(m.name)]
    members = [m for m in members if is_utf8(m.name)]
    for m in members:  # check everything before writing anything
        _check_member_name(archive, m.name)
        if m.issym() or m.islnk() or m.isdev() or m.isfifo():
            kind = "a link" if (m.issym() or m.islnk()) else "a device or pipe"
            raise _refuse(archive, m.name, f"is {kind}, which could reach outside the target")
    _check_unique(archive, [m.name for m in members])
    files = [m for m in members if m.isfile()]
    _check_sizes(archive, [(m.name, m.size, None) for m in files], target)
    try:
        tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as err:
        raise TlpipeError(f"Refusing to extract {archive}: {err}. Nothing was kept.") from None
    _list_rejected(target, rejected)


# ---------------------------------------------------------------- folders


def _link_problem(path: Path, root: Path) -> str | None:
    """Why a symbolic link under ``root`` (resolved) must not be read: it points
    nowhere, loops, or leads outside the source (where a private file would be
    copied into the repository and DVC's cache). None for a link that stays inside."""
    if not path.is_symlink():
        return None
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    except (OSError, RuntimeError):
        return f"a symbolic link to {os.readlink(path)!r} that loops: never followed"
    if not resolved.is_relative_to(root):
        return f"a symbolic link to {os.readlink(path)!r}, outside data.source: never read"
    return None


def _copy_folder(source: Path, target: Path) -> None:
    """Copy (hard-link where possible) a folder source; a link that points
    nowhere, loops or leads outside the source, or a file whose name is not
    UTF-8, is listed in data/raw/.fetch_rejected.csv, which split reports."""
    print(f"fetch: copying {source}", flush=True)
    rejected = []
    root = source.resolve()
    for path in _walk(source):
        rel = path.relative_to(source)
        if is_hidden(rel):
            continue
        out = target / rel
        if not is_utf8(str(rel)):
            if path.is_file() and not _link_problem(path, root):
                rejected.append((shown_name(rel.as_posix()), NOT_UTF8))
        elif problem := _link_problem(path, root):
            rejected.append((rel.as_posix(), problem))
        elif path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            try:  # a hard link is free when source and data/ share a file system
                os.link(path.resolve(), out)
            except OSError:
                shutil.copy2(path, out)
    _list_rejected(target, rejected)


def _walk(folder: Path):
    """Every path under ``folder`` in sorted order (a folder before what it
    holds, as sorted(folder.rglob("*")) gives them, links to folders not
    entered), listing one folder at a time: memory is one folder's names, not
    the whole tree's."""
    for name in sorted(entry.name for entry in os.scandir(folder)):
        path = folder / name
        yield path
        if path.is_dir() and not path.is_symlink():
            yield from _walk(path)


# A name DVC cannot hash (it encodes paths as UTF-8) must never reach data/raw.
NOT_UTF8 = ("file name is not valid UTF-8, so DVC cannot track it: rename it in UTF-8 "
            "(e.g. `convmv -f latin1 -t utf8 -r --notest FOLDER`)")


def is_utf8(name: str) -> bool:
    """Whether a file name (as Python decodes it, undecodable bytes as surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """A name with its undecodable bytes written as \\xNN, printable in any report."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _list_rejected(target: Path, rejected: list[tuple[str, str]]) -> None:
    if rejected:
        (target / paths.FETCH_REJECTED.name).write_text(csv_text(("path", "reason"), rejected))
        print(f"fetch: {len(rejected)} file(s) not copied (split lists them in {paths.REJECTED}), "
              f"e.g. {rejected[0][0]!r}: {rejected[0][1]}", flush=True)


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
