"""data_source: what data.source may name, checked in params' wording."""

import pytest

from tlpipe.data_source import archive_kind, is_url, local_source, url_rule_broken
from tlpipe.errors import TlpipeError


@pytest.mark.parametrize("name, kind", [("a.zip", "zip"), ("A.ZIP", "zip"), ("a.tar", "tar"), ("a.tar.gz", "tar"),
                                        ("a.tgz", "tar"), ("a.7z", None), ("folder", None)])
def test_archive_kind_by_suffix(name, kind):
    assert archive_kind(name) == kind


def test_only_http_urls_are_urls_and_they_must_name_an_archive():
    assert is_url("https://example.org/a.zip") and is_url("http://example.org/a.tgz")
    assert not is_url("ftp://example.org/a.zip") and not is_url("data/photos") and not is_url("keras:cifar10")
    assert url_rule_broken("https://example.org/a.zip?download=1") is None
    assert url_rule_broken("https://example.org/page.html").startswith("an http(s) URL of an archive (.zip, ")
    assert url_rule_broken("data/photos") is None  # a local path: checked by local_source when fetch runs


def test_local_sources_checked_on_the_file_system(tmp_path):
    (tmp_path / "photos.zip").write_bytes(b"")
    assert local_source(str(tmp_path / "photos.zip"), None) == tmp_path / "photos.zip"
    assert local_source(str(tmp_path), None) == tmp_path
    assert local_source("https://example.org/a.zip", None) is None
    assert local_source("keras:mnist", None) is None
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TlpipeError, match=r"params.yaml: The 'data.source' parameter must be .* \(not an archive\)"):
        local_source(str(tmp_path / "notes.txt"), None)
    with pytest.raises(TlpipeError, match=r"\(no such file or folder\)"):
        local_source(str(tmp_path / "missing"), None)
    with pytest.raises(TlpipeError, match=r"The 'data.sha256' parameter must be null when 'data.source' is a folder"):
        local_source(str(tmp_path), "a" * 64)
