"""pneumoscan.data.download against a real HTTP server on 127.0.0.1 serving the real PneumoniaMNIST npz.

No internet here, so the server stands in for Zenodo. It can serve the file whole, corrupted, cut
off mid-body, ignoring Range, or fail with an HTTP error, which is everything a real download meets.
"""
from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pneumoscan.data import download as dl
from pneumoscan.data.download import (
    DownloadError,
    download_file,
    download_medmnist,
    md5sum,
    medmnist_url,
    offline_help,
)
from pneumoscan.paths import cache_dir

LOCAL_MD5 = "e5dd2a2667372c85797b9aade461da17"  # the shared local copy, not the official file
NAME = "pneumoniamnist.npz"
FAST = dict(backoff=0, timeout=5.0, progress=False)


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.data`` at /pneumoniamnist.npz with Range support; ``server.mode`` picks a failure."""

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        mode = srv.mode
        if self.path.split("?")[0] != f"/{NAME}":
            self.send_error(404)
            return
        if mode == "flaky" and len(srv.requests) == 1:
            self.send_error(503)
            return
        data = srv.data
        if mode == "corrupt":
            flipped = bytearray(data)
            for i in range(100, len(flipped), 50_000):
                flipped[i] ^= 0xFF
            data = bytes(flipped)
        start = 0
        if rng and mode != "norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))  # always the full length, even when cut
        self.end_headers()
        cut = mode == "always-cut" or (mode == "cut" and len(srv.requests) == 1)
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.close_connection = True  # after a cut, the client sees EOF short of Content-Length

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="session")
def npz_bytes(mnist_npz) -> bytes:
    data = mnist_npz.read_bytes()
    assert hashlib.md5(data).hexdigest() == LOCAL_MD5, f"{mnist_npz} changed; update LOCAL_MD5"
    return data


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # urllib honours *_proxy variables; 127.0.0.1 must be reached directly.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)


@pytest.fixture
def server(npz_bytes):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.data, srv.mode, srv.requests = npz_bytes, "good", []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_md5sum_is_chunked_md5(mnist_npz, npz_bytes):
    assert len(npz_bytes) > dl._CHUNK  # several chunks
    assert md5sum(mnist_npz) == hashlib.md5(npz_bytes).hexdigest() == LOCAL_MD5


def test_good_download_with_progress(server, tmp_path, npz_bytes, capsys):
    dest = tmp_path / "sub" / NAME
    assert download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, backoff=0) == dest
    assert dest.read_bytes() == npz_bytes
    assert not part_of(dest).exists()
    assert server.requests == [(f"/{NAME}", None)]
    assert NAME in capsys.readouterr().err  # the tqdm bar went to stderr


def test_corrupt_file_is_rejected_and_deleted(server, tmp_path):
    server.mode = "corrupt"
    dest = tmp_path / NAME
    with pytest.raises(DownloadError, match=f"MD5 mismatch.*expected {LOCAL_MD5}, got [0-9a-f]{{32}}") as err:
        download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert server.url in str(err.value)
    assert not dest.exists() and not part_of(dest).exists()


def test_cut_connection_resumes_with_range(server, tmp_path, npz_bytes):
    server.mode = "cut"
    dest = tmp_path / NAME
    download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert md5sum(dest) == LOCAL_MD5
    assert [r for _, r in server.requests] == [None, f"bytes={len(npz_bytes) // 2}-"]
    assert not part_of(dest).exists()


def test_retries_exhausted_keeps_part_then_resumes(server, tmp_path, npz_bytes):
    server.mode = "always-cut"
    dest = tmp_path / NAME
    with pytest.raises(DownloadError, match="failed after 3 attempts") as err:
        download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, retries=2, **FAST)
    part = part_of(dest)
    assert not dest.exists()
    assert str(part) in str(err.value) and "resumes" in str(err.value)
    assert len(server.requests) == 3 and not err.value.offline
    kept = part.read_bytes()
    assert 0 < len(kept) < len(npz_bytes) and npz_bytes.startswith(kept)

    server.mode, server.requests = "good", []
    download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert server.requests == [(f"/{NAME}", f"bytes={len(kept)}-")]
    assert md5sum(dest) == LOCAL_MD5 and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.mode = "norange"
    dest = tmp_path / NAME
    part_of(dest).write_bytes(b"stale bytes from some other file" * 100)
    download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert server.requests == [(f"/{NAME}", "bytes=3200-")]  # asked to resume, got a 200
    assert md5sum(dest) == LOCAL_MD5


def test_complete_part_is_finished_without_refetching(server, tmp_path, npz_bytes):
    dest = tmp_path / NAME
    part_of(dest).write_bytes(npz_bytes)  # killed after the last byte, before the rename
    download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert server.requests == [(f"/{NAME}", f"bytes={len(npz_bytes)}-")]  # answered 416
    assert md5sum(dest) == LOCAL_MD5 and not part_of(dest).exists()


def test_server_error_is_retried(server, tmp_path):
    server.mode = "flaky"  # 503 first, then the file
    dest = tmp_path / NAME
    download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert len(server.requests) == 2 and md5sum(dest) == LOCAL_MD5


def test_404_names_url_and_is_not_retried(server, tmp_path):
    url = f"{server.url}/missing.npz"
    with pytest.raises(DownloadError, match="404") as err:
        download_file(url, tmp_path / NAME, LOCAL_MD5, **FAST)
    assert url in str(err.value)
    assert len(server.requests) == 1
    assert not (tmp_path / NAME).exists()


def test_existing_good_file_makes_no_request(server, tmp_path, mnist_npz):
    dest = shutil.copy(mnist_npz, tmp_path / NAME)
    assert download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST) == Path(dest)
    assert server.requests == []


def test_existing_wrong_file_is_replaced(server, tmp_path):
    dest = tmp_path / NAME
    dest.write_bytes(b"not an npz")
    download_file(f"{server.url}/{NAME}", dest, LOCAL_MD5, **FAST)
    assert md5sum(dest) == LOCAL_MD5 and len(server.requests) == 1


def test_offline_error_says_what_to_download_and_where(tmp_path):
    with pytest.raises(DownloadError) as err:
        download_medmnist(28, tmp_path, base_url=closed_port_url(), retries=1, **FAST)
    text = str(err.value)
    assert err.value.offline
    assert "cannot connect" in text
    assert NAME in text and str(tmp_path / NAME) in text
    assert dl.MEDMNIST_FILES[28][1] in text
    assert "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1" in text
    assert "--data PATH" in text
    assert not (tmp_path / NAME).exists()


def test_offline_help_defaults_to_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path))
    assert str(tmp_path / "medmnist" / "pneumoniamnist_224.npz") in offline_help(224)
    assert "d6a3c71de1b945ea11211b03746c1fe1" in offline_help(224)


def test_download_medmnist_via_env_mirror_into_cache(server, monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path))
    monkeypatch.setenv(dl.MIRROR_ENV, server.url + "/")
    monkeypatch.setitem(dl.MEDMNIST_FILES, 28, (NAME, LOCAL_MD5))
    path = download_medmnist(**FAST)
    assert path == cache_dir() / "medmnist" / NAME == tmp_path / "medmnist" / NAME
    assert md5sum(path) == LOCAL_MD5
    assert server.requests == [(f"/{NAME}", None)]


def test_download_medmnist_base_url_beats_env(server, monkeypatch, tmp_path):
    monkeypatch.setenv(dl.MIRROR_ENV, closed_port_url())
    monkeypatch.setitem(dl.MEDMNIST_FILES, 28, (NAME, LOCAL_MD5))
    path = download_medmnist(28, tmp_path, base_url=server.url, **FAST)
    assert path == tmp_path / NAME and md5sum(path) == LOCAL_MD5


def test_download_medmnist_checks_the_official_md5(server, tmp_path):
    # The local copy is not byte-identical to Zenodo's, so the unpatched table must reject it.
    with pytest.raises(DownloadError, match="expected 28209eda62fecd6e6a2d98b1501bb15f"):
        download_medmnist(28, tmp_path, base_url=server.url, **FAST)
    assert not (tmp_path / NAME).exists()


def test_urls_and_unknown_size(monkeypatch):
    assert medmnist_url(224) == "https://zenodo.org/records/10519652/files/pneumoniamnist_224.npz?download=1"
    assert medmnist_url(64, "http://mirror/x/") == "http://mirror/x/pneumoniamnist_64.npz"
    monkeypatch.setenv(dl.MIRROR_ENV, "http://env-mirror")
    assert medmnist_url(128) == "http://env-mirror/pneumoniamnist_128.npz"
    with pytest.raises(ValueError, match="28, 64, 128, 224"):
        download_medmnist(32)


# ------------------------------------------------------------------ where the data comes from
def test_auto_source_never_downloads_and_names_the_command(server, monkeypatch, tmp_path):
    from pneumoscan.data.locate import resolve_data_path
    from pneumoscan.errors import DataSourceError

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path))
    monkeypatch.delenv("PNEUMOSCAN_DATA", raising=False)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url + "/")
    with pytest.raises(DataSourceError, match="pneumoscan data download pneumoniamnist"):
        resolve_data_path(None, "auto")
    assert server.requests == []  # nothing was fetched behind the user's back


def test_medmnist_source_downloads_with_an_announcement(server, monkeypatch, tmp_path, capsys):
    from pneumoscan.data.locate import resolve_data_path

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path))
    monkeypatch.delenv("PNEUMOSCAN_DATA", raising=False)
    monkeypatch.setenv(dl.MIRROR_ENV, server.url + "/")
    monkeypatch.setitem(dl.MEDMNIST_FILES, 28, (NAME, LOCAL_MD5))
    path = resolve_data_path(None, "medmnist")
    assert path == tmp_path / "medmnist" / NAME and md5sum(path) == LOCAL_MD5
    assert "downloading it (28 px" in capsys.readouterr().err
    assert resolve_data_path(None, "auto") == path  # found in the cache from now on, no new request
    assert len(server.requests) == 1


def test_relative_data_paths_resolve_against_the_callers_directory(monkeypatch, tmp_path, shared_data):
    from pneumoscan.data.locate import resolve_data_path

    import os

    monkeypatch.chdir(shared_data.parent)
    relative = Path(shared_data.name) / "chest_xray_kermany_224"
    monkeypatch.setenv("PNEUMOSCAN_DATA", str(relative))
    found = resolve_data_path(None)
    # realpath: ../shared may itself be a link (the working directory then names the real folder)
    assert found.is_absolute() and os.path.realpath(found) == os.path.realpath(shared_data / "chest_xray_kermany_224")
    assert resolve_data_path(str(relative)) == found
    monkeypatch.chdir(tmp_path)  # later steps run elsewhere: the resolved path still holds
    assert (found / "train").is_dir()


def test_a_relative_data_variable_is_made_absolute_for_every_process(monkeypatch, shared_data):
    # The README's own command is PNEUMOSCAN_DATA=../shared/data pytest: a notebook kernel runs
    # in notebooks/, so the suite must hand on an absolute path.
    import os

    from conftest import REPO, shared_data_dir

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PNEUMOSCAN_DATA", os.path.relpath(shared_data, REPO))
    assert shared_data_dir() == shared_data
    assert os.environ["PNEUMOSCAN_DATA"] == str(shared_data)
