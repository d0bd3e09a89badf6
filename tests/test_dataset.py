"""Dataset.py against a loopback HTTP server serving archives the tests build (the server is shared
with test_dataset_hostile.py and test_main.py)."""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import Dataset
from utils import UserError


class ArchiveServer:
    """Serves files from a dict, honestly or in one of the ways real servers misbehave."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: int | None = None  # bytes sent before the next response is cut (once)
        self.ignore_range = False  # answer a Range request with the whole file (200)
        self.range_start: int | None = None  # answer a Range request with a 206 from this byte instead
        self.refuse_ranges = False  # answer every Range request with a bare 416
        self.status: int | None = None  # answer everything with this error
        self.content_type = "application/x-tar"
        self.gzip_encoding = False  # compress the body (Content-Encoding: gzip) whatever the client asks
        self.encoding_label: str | None = None  # a Content-Encoding for the file's own bytes, as Apache gives .tgz
        self.trickle: tuple[int, float] | None = None  # send (bytes, then sleep seconds) at a time
        self.requests: list[str | None] = []  # the Range header of each request
        self.accept_encodings: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                server.accept_encodings.append(self.headers.get("Accept-Encoding"))
                body = server.files.get(self.path)
                if server.status or body is None:
                    self.send_error(server.status or 404)
                    return
                if server.gzip_encoding:
                    body = gzip.compress(body)
                start = 0
                if self.headers.get("Range") and server.refuse_ranges:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Range") and not server.ignore_range:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start = start if server.range_start is None else server.range_start
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", server.content_type)
                if server.gzip_encoding or server.encoding_label:
                    self.send_header("Content-Encoding", server.encoding_label or "gzip")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.drop_after is not None:
                    payload, server.drop_after = payload[:server.drop_after], None
                    self.close_connection = True
                step, pause_s = server.trickle or (len(payload) or 1, 0.0)
                try:
                    for offset in range(0, len(payload), step):
                        self.wfile.write(payload[offset:offset + step])
                        self.wfile.flush()
                        time.sleep(pause_s)
                except OSError:  # the client hung up
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def server():
    archive_server = ArchiveServer()
    yield archive_server
    archive_server.httpd.shutdown()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    """Retries without Dataset's back-off pauses (the server's own pauses stay real)."""
    monkeypatch.setattr(Dataset, "time", SimpleNamespace(sleep=lambda seconds: None, monotonic=time.monotonic))


def make_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: int = 64) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_download_complete_file(server, tmp_path):
    payload = np.random.default_rng(0).bytes(300_000)
    server.files["/a.tar"] = payload
    path = Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", hashlib.sha256(payload).hexdigest(), progress=False)
    assert path.read_bytes() == payload
    assert not (tmp_path / "a.tar.part").exists()
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert len(server.requests) == 1  # a complete file is not fetched again


def test_dropped_connection_resumes_with_range(server, tmp_path):
    payload = np.random.default_rng(1).bytes(500_000)
    server.files["/a.tar"] = payload
    server.drop_after = 123_456
    path = Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", hashlib.sha256(payload).hexdigest(), progress=False)
    assert path.read_bytes() == payload
    assert len(server.requests) == 2 and server.requests[0] is None
    resumed_from = int(server.requests[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 123_456  # what arrived before the drop was kept


def test_next_run_resumes_a_part_file(server, tmp_path):
    payload = np.random.default_rng(2).bytes(200_000)
    server.files["/a.tar"] = payload
    (tmp_path / "a.tar.part").write_bytes(payload[:50_000])  # left by a killed process
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert (tmp_path / "a.tar").read_bytes() == payload
    assert server.requests == ["bytes=50000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    payload = np.random.default_rng(3).bytes(200_000)
    server.files["/a.tar"] = payload
    server.ignore_range = True
    (tmp_path / "a.tar.part").write_bytes(b"x" * 70_000)
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert (tmp_path / "a.tar").read_bytes() == payload


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    server.files["/a.tar"] = b"payload"
    with pytest.raises(UserError, match="checksum mismatch"):
        Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", "0" * 64, progress=False)
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "a.tar.part").exists()


@pytest.mark.parametrize("status", [404, 503])
def test_http_errors_exit_1_with_one_line(server, tmp_path, capsys, status):
    server.status = status
    with pytest.raises(SystemExit) as exit_info:
        Dataset.run_cli(lambda: Dataset.main(["--url", server.url + "/a.tar", "--dest", str(tmp_path), "--retries", "2"]))
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: download failed") and "\n" not in error and "Traceback" not in error
    assert not (tmp_path / "a.tar").exists()


def test_extraction_is_idempotent(tmp_path):
    archive = tmp_path / "good.tar"
    archive.write_bytes(make_tar({"wiki_crop/00/a.jpg": b"abc"}))
    Dataset.extract_archive(archive, tmp_path / "out", progress=False)
    (tmp_path / "out" / "wiki_crop" / "00" / "a.jpg").write_bytes(b"kept")
    Dataset.extract_archive(archive, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "wiki_crop" / "00" / "a.jpg").read_bytes() == b"kept"


@pytest.mark.parametrize("name,kind", [("../escape.txt", "file"), ("/tmp/absolute-escape.txt", "file"),
                                        ("link", "symlink"), ("dev", "device")])
def test_malicious_members_are_refused(tmp_path, name, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info, io.BytesIO(b"") if kind == "file" else None)
    archive = tmp_path / "evil.tar"
    archive.write_bytes(buffer.getvalue())
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="unsafe archive"):
        Dataset.extract_archive(archive, dest, progress=False)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert not (dest / name.lstrip("/")).exists() and not (dest / "link").is_symlink()


def test_archive_on_disk_is_extracted_without_download(tmp_path, capsys):
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("UTKFace/26_0_1_20170116.jpg.chip.jpg")
        data = jpeg_bytes(0)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert Dataset.main(["--archive", str(archive), "--dest", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "UTKFace" / "26_0_1_20170116.jpg.chip.jpg").read_bytes() == data
    assert "extracted" in capsys.readouterr().out
