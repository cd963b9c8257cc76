"""Downloads that cannot poison the Keras cache, against a real HTTP server on
127.0.0.1 that each test starts and stops."""

import io
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tlpipe import fetch
from tlpipe.errors import TlpipeError
from tlpipe.params import DataParams

from conftest import REPO, make_class_folders, tool_env


def zip_bytes(folder) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, "pets/" + path.relative_to(folder).as_posix())
    return buf.getvalue()


class Server:
    """Serves ``routes[path] = (status, body, mode)``; mode 'cut' sends half the
    body and closes without a Content-Length, 'stall' sends half and waits."""

    def __init__(self):
        self.routes = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802
                status, body, mode = routes.get(self.path, (404, b"<html>not found</html>", "full"))
                self.send_response(status)
                if mode == "full":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "full":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if mode == "stall":
                    time.sleep(30)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home / "datasets"


@pytest.fixture
def archive(tmp_path):
    return zip_bytes(make_class_folders(tmp_path / "imgs", per_class=2))


def get(url, tmp_path, sha256=None):
    return fetch.run(DataParams(url, sha256), tmp_path / "raw")


def test_good_download_is_cached_then_reused(server, cache, archive, tmp_path):
    server.routes["/pets.zip"] = (200, archive, "full")
    assert sorted(p.name for p in get(server.url("/pets.zip"), tmp_path).iterdir()) == ["blue", "red"]
    assert (cache / "pets.zip").read_bytes() == archive
    server.routes.clear()  # offline now: the cache serves it
    assert get(server.url("/pets.zip"), tmp_path).is_dir()


@pytest.mark.parametrize("mode", ["cut", "error page"])
def test_bad_download_is_never_cached_and_a_fixed_server_then_works(server, cache, archive, tmp_path, mode):
    served = (200, archive, "cut") if mode == "cut" else (200, b"<html>Service unavailable</html>", "full")
    server.routes["/pets.zip"] = served
    with pytest.raises(TlpipeError, match=r"download of data.source .* not a (zip|readable) archive"):
        get(server.url("/pets.zip"), tmp_path)
    assert not (cache / "pets.zip").exists() and list(cache.iterdir()) == []
    server.routes["/pets.zip"] = (200, archive, "full")  # the server is fixed
    assert get(server.url("/pets.zip"), tmp_path).is_dir()


def test_transfer_shorter_than_announced_is_refused(server, cache, archive, tmp_path):
    server.routes["/pets.zip"] = (200, archive, "full")
    original = fetch._stream

    def short_stream(url, out, fname):
        original(url, out, fname)
        with open(out, "r+b") as f:  # as if the connection dropped with the length announced
            f.truncate(len(archive) // 3)

    fetch._stream = short_stream
    try:
        with pytest.raises(TlpipeError, match="not a (zip|readable) archive"):
            get(server.url("/pets.zip"), tmp_path)
    finally:
        fetch._stream = original
    assert list(cache.iterdir()) == []


def test_a_corrupt_file_already_in_the_cache_is_downloaded_again(server, cache, archive, tmp_path):
    cache.mkdir(parents=True)
    (cache / "pets.zip").write_bytes(archive[: len(archive) // 2])  # left by an older tool
    server.routes["/pets.zip"] = (200, archive, "full")
    assert get(server.url("/pets.zip"), tmp_path).is_dir()
    assert (cache / "pets.zip").read_bytes() == archive


def test_a_corrupt_file_in_a_read_only_cache_names_the_fix(cache, tmp_path, monkeypatch):
    cache.mkdir(parents=True)
    (cache / "pets.zip").write_bytes(b"<html>")
    monkeypatch.setattr(fetch, "_writable", lambda folder: False)  # as for a non-root user (tests run as root)
    with pytest.raises(TlpipeError, match=r"read-only\. Delete it \(rm .*pets.zip\)"):
        get("http://127.0.0.1:9/pets.zip", tmp_path)


def test_wrong_checksum_is_never_cached(server, cache, archive, tmp_path):
    server.routes["/pets.zip"] = (200, archive, "full")
    with pytest.raises(TlpipeError, match="not 'data.sha256'"):
        get(server.url("/pets.zip"), tmp_path, sha256="0" * 64)
    assert list(cache.iterdir()) == []


def test_sigterm_during_download_leaves_nothing_under_the_real_name(server, cache, archive, tmp_path):
    server.routes["/pets.zip"] = (200, archive * 50, "stall")
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n"
        "from tlpipe import fetch; from tlpipe.params import DataParams\n"
        f"fetch.run(DataParams({server.url('/pets.zip')!r}, None), __import__('pathlib').Path({str(tmp_path / 'raw')!r}))\n"
    )
    env = {**tool_env(), "KERAS_HOME": str(cache.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cache.is_dir() and any(cache.iterdir())):
        time.sleep(0.05)
    time.sleep(0.5)  # some bytes written
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not (cache / "pets.zip").exists()
    assert not (tmp_path / "raw").exists()
    server.routes["/pets.zip"] = (200, archive, "full")
    assert get(server.url("/pets.zip"), tmp_path).is_dir()  # and leftovers are swept
    assert [p.name for p in cache.iterdir()] == ["pets.zip"]
