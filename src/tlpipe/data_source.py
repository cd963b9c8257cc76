"""What ``data.source`` may name: an http(s) URL of an archive, a local
archive or folder, or a catalog (tlpipe.catalogs). params validation checks
the spelling; fetch checks the file system when it runs."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from tlpipe import catalogs
from tlpipe.errors import invalid

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def archive_kind(name: str) -> str | None:
    """'zip' or 'tar' by the file name's suffix, else None."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def url_rule_broken(source: str) -> str | None:
    """What a URL source breaks (it must name an archive), or None."""
    if is_url(source) and not archive_kind(source.split("?")[0]):
        return f"an http(s) URL of an archive ({', '.join(ARCHIVE_SUFFIXES)})"
    return None


def local_source(source: str, sha256: str | None) -> Path | None:
    """The local file or folder ``source`` names (None for a URL or a catalog)."""
    if is_url(source) or catalogs.is_catalog(source):
        return None
    local = Path(source).expanduser()
    if local.is_dir():
        if sha256:
            raise invalid("data.sha256", "null when 'data.source' is a folder (only an archive has a checksum)",
                          sha256)
        return local
    if local.is_file() and archive_kind(local.name):
        return local
    what = "not an archive" if local.is_file() else "no such file or folder"
    raise invalid(
        "data.source",
        f"an http(s) URL of an archive, a local archive ({', '.join(ARCHIVE_SUFFIXES)}) or a local folder",
        source,
        f"({what})",
    )
