"""Dataset.py and main.py against a loopback HTTP server serving archives the tests build."""
from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import write_wiki_mat

import Dataset
import main as fetch_main
from utils import UserError


class ArchiveServer:
    """Serves files from a dict; can drop a connection mid-transfer, ignore Range, or answer an error."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: int | None = None  # bytes sent before the next response is cut (once)
        self.ignore_range = False
        self.status: int | None = None
        self.requests: list[str | None] = []  # the Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                body = server.files.get(self.path)
                if server.status or body is None:
                    self.send_error(server.status or 404)
                    return
                start = 0
                if self.headers.get("Range") and not server.ignore_range:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.drop_after is not None:
                    payload, server.drop_after = payload[:server.drop_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    archive_server = ArchiveServer()
    yield archive_server
    archive_server.httpd.shutdown()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(Dataset.time, "sleep", lambda seconds: None)


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


def wiki_archive() -> tuple[bytes, int]:
    rows = [  # two usable rows, one without a face, one without gender
        dict(dob=723671, photo_taken=2009, full_path="17/10000217_1981-05-05_2009.jpg", gender=1.0,
             face_location=[5, 5, 50, 50], face_score=4.3),
        dict(dob=711840, photo_taken=1990, full_path="22/2_1948-12-03_1990.jpg", gender=0.0,
             face_location=[1, 2, 40, 41], face_score=2.0),
        dict(dob=711840, photo_taken=1990, full_path="22/3_1948-12-03_1990.jpg", gender=0.0,
             face_location=[1, 1, 1, 1], face_score=float("-inf")),
        dict(dob=711840, photo_taken=1990, full_path="22/4_1948-12-03_1990.jpg", gender=float("nan"),
             face_location=[1, 2, 40, 41], face_score=3.0),
    ]
    buffer = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_wiki_mat(Path(folder) / "wiki.mat", rows)
        members = {"wiki_crop/wiki.mat": (Path(folder) / "wiki.mat").read_bytes()}
    members.update({f"wiki_crop/{r['full_path']}": jpeg_bytes(i, size=256) for i, r in enumerate(rows)})
    buffer.write(make_tar(members))
    return buffer.getvalue(), 2


def test_main_fetches_end_to_end_through_a_dropped_connection(server, tmp_path, capsys):
    archive, usable_rows = wiki_archive()
    server.files["/wiki_crop.tar"] = archive
    server.drop_after = len(archive) // 3
    data_dir = tmp_path / "imdb"
    assert fetch_main.main(["--data-dir", str(data_dir), "--url", server.url + "/wiki_crop.tar"]) == 0
    cache = pd.read_csv(data_dir / "cache.csv")
    assert len(cache) == usable_rows
    assert cache.iloc[0]["path"] == "wiki_crop/17/10000217_1981-05-05_2009.jpg" and cache.iloc[0]["age"] == 28
    assert cache.iloc[1]["age"] == 1990 - 1948 - 1  # born in December
    output = capsys.readouterr().out
    assert "python train.py --cache" in output
    assert server.requests[1].startswith("bytes=") and server.requests[1] != "bytes=0-"
    assert fetch_main.main(["--data-dir", str(data_dir), "--url", server.url + "/wiki_crop.tar"]) == 0
    assert len(server.requests) == 2  # nothing fetched again
    assert "up to date" in capsys.readouterr().out


def test_main_refuses_a_malicious_archive(server, tmp_path, capsys):
    server.files["/wiki_crop.tar"] = make_tar({"wiki_crop/wiki.mat": b"x", "../../evil.txt": b"owned"})
    with pytest.raises(SystemExit) as exit_info:
        fetch_main.run_cli(lambda: fetch_main.main(["--data-dir", str(tmp_path / "imdb"),
                                                    "--url", server.url + "/wiki_crop.tar"]))
    assert exit_info.value.code == 1
    assert "unsafe archive" in capsys.readouterr().err
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


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
