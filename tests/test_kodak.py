"""The Kodak download helper, against a local HTTP server (no outside network)."""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest

from compressml.data.kodak import KODAK_SHA256, download_kodak
from compressml.errors import DownloadError


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(QuietHandler, directory=str(served))
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_checksums_cover_the_24_images():
    assert sorted(KODAK_SHA256) == [f"kodim{i:02d}.png" for i in range(1, 25)]


def test_download_verifies_and_caches(server, tmp_path):
    served, url = server
    files = {f"kodim0{i}.png": f"image {i}".encode() for i in (1, 2)}
    for name, data in files.items():
        (served / name).write_bytes(data)
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    dest = download_kodak(tmp_path / "cache", base_url=url, checksums=sums)
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    # already there and correct: not fetched again, even when the server no longer has it
    (served / "kodim01.png").unlink()
    download_kodak(dest, base_url=url, checksums=sums)


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    served, url = server
    (served / "kodim01.png").write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_kodak(tmp_path / "cache", base_url=url, checksums={"kodim01.png": "0" * 64})
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_server_is_a_clear_error(server, tmp_path):
    _, url = server
    with pytest.raises(DownloadError, match="could not download"):
        download_kodak(tmp_path / "cache", base_url=url, checksums={"missing.png": "0" * 64})


def test_cli_download_kodak_error_is_one_line(server, tmp_path, capsys):
    from compressml.cli import main

    _, url = server
    code = main(["download-kodak", "--dest", str(tmp_path / "k"), "--url", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error: could not download")
