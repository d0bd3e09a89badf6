"""Dataset.py against misbehaving servers, hostile or damaged archives, a full disk and concurrent runs."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, SHARED
from test_dataset import make_tar, no_backoff, server  # noqa: F401 (fixtures)

import Dataset
from utils import UserError


def payload(seed: int, size: int = 200_000) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def tree(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def members_in(folder: Path) -> set[str]:
    """What an extraction left under folder, bookkeeping files (hidden) aside."""
    return {name for name in tree(folder) if not any(part.startswith(".") for part in Path(name).parts)}


def tar_of(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes | None = None):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    if kind != tarfile.REGTYPE:
        return info, None
    return info, b"x" if data is None else data


def symlink_chain_tar() -> bytes:
    """CVE-2025-4517's shape: links nested past PATH_MAX, which os.path.realpath (and with it tarfile's
    "data" filter on Python 3.11.7) stops resolving, so a link it judges inside dest points outside."""
    component, steps, path, entries = "d" * 247, "abcdefghijklmnop", "", []
    for step in steps:
        entries.append(entry(os.path.join(path, component), tarfile.DIRTYPE))
        entries.append(entry(os.path.join(path, step), tarfile.SYMTYPE, component))
        path = os.path.join(path, component)
    long_link = os.path.join(*steps, "l" * 254)
    entries.append(entry(long_link, tarfile.SYMTYPE, "../" * len(steps)))  # back to dest, for the OS
    entries.append(entry("escape", tarfile.SYMTYPE, long_link + "/../outside"))  # dest/../outside
    entries.append(entry("escape/owned.txt", data=b"written outside dest\n"))
    return tar_of(*entries)


def run_script(script: str, *args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run a project script in a child process, optionally with files capped at file_size_limit bytes
    (RLIMIT_FSIZE, SIGXFSZ ignored: writes then fail with EFBIG, as on a full disk)."""
    limit = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit})); "
             if file_size_limit else "")
    code = (f"import runpy, sys; {limit}sys.argv = [{script!r}] + sys.argv[1:]; "
            f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def assert_one_line_error(stderr: str, fragment: str) -> None:
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines[-1].startswith("error: ") and fragment in lines[-1], stderr


# --- misbehaving servers ------------------------------------------------------------------------

@pytest.mark.parametrize("range_start", [0, 1_000])
def test_206_for_another_range_never_corrupts(server, tmp_path, range_start):
    data = payload(1)
    server.files["/a.tar"] = data
    server.range_start = range_start  # the server answers bytes=50000- with a different range
    (tmp_path / "a.tar.part").write_bytes(data[:50_000])
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert (tmp_path / "a.tar").read_bytes() == data


def test_416_after_a_drop_starts_again(server, tmp_path):
    data = payload(2)
    server.files["/a.tar"] = data
    server.drop_after, server.refuse_ranges = 70_000, True
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert (tmp_path / "a.tar").read_bytes() == data
    assert server.requests[0] is None and server.requests[1].startswith("bytes=") and server.requests[2] is None


def test_416_for_a_complete_part_file_finishes_it(server, tmp_path):
    data = payload(3)
    server.files["/a.tar"] = data
    (tmp_path / "a.tar.part").write_bytes(data)  # a run killed just before the rename
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert (tmp_path / "a.tar").read_bytes() == data and server.requests == [f"bytes={len(data)}-"]


@pytest.mark.parametrize("body,content_type,message", [
    (b"<html><body>Service moved</body></html>", "text/html; charset=utf-8", "web page"),
    (b"", "application/x-tar", "empty file"),
])
def test_a_page_or_an_empty_body_is_never_kept(server, tmp_path, body, content_type, message):
    server.files["/wiki_crop.tar"], server.content_type = body, content_type
    with pytest.raises(UserError, match=message):
        Dataset.fetch(Dataset.KnownArchive(server.url + "/wiki_crop.tar", "imdb"), tmp_path, progress=False)
    assert members_in(tmp_path) == set()
    server.files["/wiki_crop.tar"], server.content_type = make_tar({"wiki_crop/a.jpg": b"a"}), "application/x-tar"
    Dataset.fetch(Dataset.KnownArchive(server.url + "/wiki_crop.tar", "imdb"), tmp_path, progress=False)
    assert (tmp_path / "wiki_crop" / "a.jpg").read_bytes() == b"a"  # the rerun is not stuck


def test_a_body_that_is_no_archive_is_deleted_and_a_stale_one_replaced(server, tmp_path):
    source = Dataset.KnownArchive(server.url + "/wiki_crop.tar", "imdb")
    server.files["/wiki_crop.tar"] = b"Sorry, this dataset moved. " * 100
    with pytest.raises(UserError, match="not a tar archive"):
        Dataset.fetch(source, tmp_path, progress=False)
    assert members_in(tmp_path) == set()
    (tmp_path / "wiki_crop.tar").write_bytes(b"<html>left by an older version</html>")
    server.files["/wiki_crop.tar"] = make_tar({"wiki_crop/a.jpg": b"a"})
    Dataset.fetch(source, tmp_path, progress=False)
    assert (tmp_path / "wiki_crop" / "a.jpg").read_bytes() == b"a"


def test_known_size_and_checksum_are_enforced(server, tmp_path):
    data = payload(4)
    server.files["/lfw.tgz"] = data
    with pytest.raises(UserError, match=f"offers {len(data)} bytes, not the {len(data) + 1}"):
        Dataset.download_file(server.url + "/lfw.tgz", tmp_path / "lfw.tgz", size_bytes=len(data) + 1, progress=False)
    path = Dataset.download_file(server.url + "/lfw.tgz", tmp_path / "lfw.tgz", hashlib.sha256(data).hexdigest(),
                                 size_bytes=len(data), progress=False)
    assert path.read_bytes() == data


def test_a_trickling_server_meets_the_deadline(server, tmp_path):
    server.files["/a.tar"] = payload(5, 5_000)
    server.trickle = (1, 0.02)  # 50 bytes a second: every read succeeds, the whole never arrives
    started = time.monotonic()
    with pytest.raises(UserError, match="too slow"):
        Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", timeout_s=5, deadline_s=0.5, progress=False)
    assert time.monotonic() - started < 3
    assert not (tmp_path / "a.tar").exists() and (tmp_path / "a.tar.part").stat().st_size > 0  # kept to resume


def test_a_trickling_server_is_left_once_it_stays_under_the_speed_limit(server, tmp_path):
    """One byte every 20 ms (50 bytes/s): each read arrives well within --timeout and the deadline is hours
    away; the speed limit (here 1,000 bytes/s over 0.3 s) ends it, as curl's --speed-limit would."""
    server.files["/a.tar"] = payload(5, 5_000)
    server.trickle = (1, 0.02)
    started = time.monotonic()
    with pytest.raises(UserError, match="under 1000 bytes/s for 0.3 s") as error:
        Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", timeout_s=5, progress=False,
                              speed_limit_bytes_per_s=1000, speed_time_s=0.3)
    assert time.monotonic() - started < 3 and len(server.requests) == 1  # given up at once, not retried
    assert "resume from" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "a.tar").exists() and (tmp_path / "a.tar.part").stat().st_size > 0  # kept to resume


def test_a_slow_but_steady_transfer_is_not_stopped(server, tmp_path):
    data = tar_of(entry("a.txt", data=payload(6, 20_000)))
    server.files["/a.tar"] = data
    server.trickle = (2_000, 0.02)  # about 100 KB/s, for about 0.3 s
    path = Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False,
                                 speed_limit_bytes_per_s=1000, speed_time_s=0.05)
    assert path.read_bytes() == data


def test_the_speed_limit_on_the_command_line_is_one_line_and_keeps_the_part(server, tmp_path):
    server.files["/a.tar"] = payload(5, 5_000)
    server.trickle = (1, 0.02)
    result = run_script("Dataset.py", "--url", server.url + "/a.tar", "--dest", str(tmp_path),
                        "--speed-limit", "1000", "--speed-time", "0.3")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "download too slow: under 1000 bytes/s for 0.3 s")
    assert (tmp_path / "a.tar.part").stat().st_size > 0


@pytest.mark.parametrize("drop_after", [None, 40_000])
def test_gzip_content_encoding_is_decoded(server, tmp_path, drop_after):
    data = payload(8)
    server.files["/a.tar"], server.gzip_encoding, server.drop_after = data, True, drop_after
    # after a drop the client restarts: ranges of a compressed body cannot be appended to decoded bytes
    Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert (tmp_path / "a.tar").read_bytes() == data
    assert set(server.accept_encodings) == {"identity"}


def test_a_tgz_labelled_x_gzip_is_kept_as_it_is(server, tmp_path):
    tgz = gzip.compress(make_tar({"lfw/a.jpg": b"a"}))
    server.files["/lfw.tgz"], server.encoding_label = tgz, "x-gzip"  # Apache's AddEncoding x-gzip .tgz
    Dataset.download_file(server.url + "/lfw.tgz", tmp_path / "lfw.tgz", hashlib.sha256(tgz).hexdigest(),
                          size_bytes=len(tgz), progress=False)
    assert (tmp_path / "lfw.tgz").read_bytes() == tgz


def test_an_encoding_that_cannot_be_decoded_is_refused(server, tmp_path):
    server.files["/a.tar"], server.encoding_label = make_tar({"a": b"a"}), "compress"
    with pytest.raises(UserError, match="Content-Encoding 'compress'"):
        Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "a.tar.part").exists()


def test_a_download_larger_than_the_free_space_stops_before_it_starts(server, tmp_path, monkeypatch):
    server.files["/a.tar"] = payload(10)
    monkeypatch.setattr(Dataset.shutil, "disk_usage", lambda path: SimpleNamespace(free=150_000))
    with pytest.raises(UserError, match="200000 more bytes needed, 150000 free"):
        Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    assert not (tmp_path / "a.tar.part").exists()


# --- hostile and damaged archives ---------------------------------------------------------------

def test_symlink_chain_past_path_max_writes_nothing_outside(tmp_path, capsys):
    archive, dest, outside = tmp_path / "poc.tar", tmp_path / "dest", tmp_path / "outside"
    archive.write_bytes(symlink_chain_tar())
    outside.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        Dataset.run_cli(lambda: Dataset.main(["--archive", str(archive), "--dest", str(dest)]))
    assert exit_info.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "unsafe archive")
    assert tree(tmp_path) == {"poc.tar", "dest", "dest/.extract.lock", "outside"}


@pytest.mark.parametrize("bad_entry", [
    entry("wiki_crop/copy.jpg", tarfile.LNKTYPE, "wiki_crop/a.jpg"),  # even a hard link inside the archive
    entry("wiki_crop/link", tarfile.SYMTYPE, "a.jpg"),
    entry("/abs/olute.jpg"), entry("C:\\windows.jpg"), entry("wiki_crop/../../up.jpg"), entry("..\\up.jpg"),
    entry("wiki_crop/null", tarfile.CHRTYPE), entry("wiki_crop/disk", tarfile.BLKTYPE),
    entry("wiki_crop/pipe", tarfile.FIFOTYPE),
], ids=["hardlink", "symlink", "absolute", "drive", "dotdot", "backslash-dotdot", "chardev", "blockdev", "fifo"])
def test_any_member_but_files_and_folders_refuses_the_whole_archive(tmp_path, bad_entry):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_of(entry("wiki_crop/a.jpg"), bad_entry, entry("wiki_crop/z.jpg")))
    for _ in range(2):  # a refused archive is never reported as extracted on the next run either
        with pytest.raises(Dataset.BadArchive, match="unsafe archive"):
            Dataset.extract_archive(archive, tmp_path / "dest", progress=False)
    assert members_in(tmp_path / "dest") == set() and tree(tmp_path / "dest") == {".extract.lock"}
    assert tree(tmp_path) == {"evil.tar", "dest", "dest/.extract.lock"}


def test_a_member_may_not_replace_the_archive_or_its_marker(tmp_path):
    archive = tmp_path / "dest" / "data.tar"
    archive.parent.mkdir()
    archive.write_bytes(make_tar({".data.tar.extracted": b"{}", "data.tar": b"x"}))
    with pytest.raises(Dataset.BadArchive, match="bookkeeping"):
        Dataset.extract_archive(archive, tmp_path / "dest", progress=False)
    assert archive.read_bytes().startswith(b".data.tar.extracted")


def three_member_tar() -> tuple[bytes, dict[str, bytes]]:
    files = {f"data/{name}.bin": payload(seed, 30_000) for seed, name in enumerate("abc")}
    return make_tar(files), files


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1:]


@pytest.mark.parametrize("damage", ["gzip-garbled-midway", "gzip-truncated", "gzip-crc", "header-bit",
                                    "first-header-bit", "tar-truncated"])
def test_a_damaged_archive_extracts_nothing_and_says_so(tmp_path, damage):
    tar_bytes, _ = three_member_tar()
    compressed = gzip.compress(tar_bytes)
    second_header = 512 + 30_208  # first header + its data padded to whole blocks
    damaged = {
        "gzip-garbled-midway": compressed[:len(compressed) // 2] + b"\x00" * 64 + compressed[len(compressed) // 2 + 64:],
        "gzip-truncated": compressed[:len(compressed) // 2],
        "gzip-crc": flip(compressed, len(compressed) - 8),  # only reading to the end of the stream sees it
        "header-bit": flip(tar_bytes, second_header + 3),  # tarfile alone would stop quietly after one member
        "first-header-bit": flip(tar_bytes, 3),
        "tar-truncated": tar_bytes[:second_header],  # ends cleanly after one member, no end-of-archive
    }[damage]
    archive = tmp_path / ("data.tar.gz" if damage.startswith("gzip") else "data.tar")
    archive.write_bytes(damaged)
    for _ in range(2):
        with pytest.raises(Dataset.BadArchive, match="corrupt archive"):
            Dataset.extract_archive(archive, tmp_path / "dest", progress=False)
    assert members_in(tmp_path / "dest") == set()


@pytest.mark.parametrize("with_folder", [False, True])
def test_an_archive_without_files_is_refused_and_leaves_no_marker(tmp_path, with_folder):
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:
        if with_folder:
            folder = tarfile.TarInfo("data")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
    with pytest.raises(Dataset.BadArchive, match="empty archive"):
        Dataset.extract_archive(archive, tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest" / ".empty.tar.extracted").exists() and members_in(tmp_path / "dest") == set()


def test_the_marker_names_the_archive_it_stands_for(tmp_path):
    archive, dest = tmp_path / "data.tar", tmp_path / "dest"
    archive.write_bytes(make_tar({"data/a.txt": b"first"}))
    Dataset.extract_archive(archive, dest, progress=False)
    marker = dest / ".data.tar.extracted"
    assert json.loads(marker.read_text())["size_bytes"] == archive.stat().st_size
    archive.write_bytes(make_tar({"data/a.txt": b"second", "data/b.txt": b"new"}))  # another archive, same name
    Dataset.extract_archive(archive, dest, progress=False)
    assert (dest / "data" / "a.txt").read_bytes() == b"second" and (dest / "data" / "b.txt").read_bytes() == b"new"
    marker.write_text("")  # an older version's empty marker does not count
    (dest / "data" / "a.txt").write_bytes(b"damaged")
    Dataset.extract_archive(archive, dest, progress=False)
    assert (dest / "data" / "a.txt").read_bytes() == b"second"


KILL_AT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import Dataset
real, calls = getattr(os, {function!r}), []
def die_at_call(*args, **kwargs):
    calls.append(1)
    if len(calls) == {count}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(os, {function!r}, die_at_call)
Dataset.extract_archive(sys.argv[1], sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("function,count", [("open", 2), ("replace", 2)], ids=["while-staging", "while-moving"])
def test_a_run_killed_during_extraction_is_completed_by_the_next(tmp_path, function, count):
    tar_bytes, files = three_member_tar()
    archive, dest = tmp_path / "data.tar", tmp_path / "dest"
    archive.write_bytes(tar_bytes)
    script = KILL_AT.format(root=str(ROOT), function=function, count=count)
    killed = subprocess.run([sys.executable, "-c", script, str(archive), str(dest)], capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert not (dest / ".data.tar.extracted").exists()
    if function == "open":
        assert members_in(dest) == set()  # nothing reaches dest before the whole archive checks out
    Dataset.extract_archive(archive, dest, progress=False)
    assert {name: (dest / name).read_bytes() for name in files} == files
    assert members_in(dest) == {"data", *files} and not (dest / ".data.tar.staging").exists()


def test_a_full_disk_leaves_no_partial_files(server, tmp_path):
    server.files["/a.tar"] = make_tar({"data/big.bin": payload(6, 300_000)})
    download = run_script("Dataset.py", "--url", server.url + "/a.tar", "--dest", str(tmp_path / "dl"),
                          "--retries", "1", file_size_limit=100_000)
    assert download.returncode == 1
    assert_one_line_error(download.stderr, "File too large")
    assert not (tmp_path / "dl" / "a.tar").exists()
    archive = tmp_path / "a.tar"
    archive.write_bytes(server.files["/a.tar"])
    extract = run_script("Dataset.py", "--archive", str(archive), "--dest", str(tmp_path / "x"),
                         file_size_limit=200_000)
    assert extract.returncode == 1
    assert_one_line_error(extract.stderr, "File too large")
    assert tree(tmp_path / "x") == {".extract.lock"}


# --- one run at a time --------------------------------------------------------------------------

def test_a_second_run_into_the_same_dest_is_refused_while_the_first_finishes(server, tmp_path):
    data = payload(7, 60_000)
    server.files["/a.tar"] = data
    server.trickle = (4_000, 0.02)  # about 0.3 s in all
    first = threading.Thread(target=Dataset.download_file,
                             args=(server.url + "/a.tar", tmp_path / "a.tar"), kwargs=dict(progress=False))
    first.start()
    give_up = time.monotonic() + 10
    while not (tmp_path / "a.tar.part").exists():
        assert time.monotonic() < give_up, "the first run never started writing"
        time.sleep(0.005)
    with pytest.raises(UserError, match="another run is downloading"):
        Dataset.download_file(server.url + "/a.tar", tmp_path / "a.tar", progress=False)
    first.join()
    assert (tmp_path / "a.tar").read_bytes() == data


def test_extraction_while_another_run_extracts_is_refused(tmp_path, capsys):
    archive, dest = tmp_path / "data.tar", tmp_path / "dest"
    archive.write_bytes(make_tar({"data/a.txt": b"a"}))
    dest.mkdir()
    with Dataset.locked(dest / ".extract.lock", "held by the test"), pytest.raises(SystemExit):
        Dataset.run_cli(lambda: Dataset.main(["--archive", str(archive), "--dest", str(dest)]))
    assert_one_line_error(capsys.readouterr().err, "another run is extracting into")
    assert members_in(dest) == set()


# --- arguments and destinations ------------------------------------------------------------------

@pytest.mark.parametrize("arguments", [["--retries", "0"], ["--timeout", "0"], ["--timeout", "-1"],
                                       ["--deadline", "0"], ["--speed-limit", "-1"], ["--speed-time", "0"], ["--sha256", "abc"], ["--url", "ftp://host/a.tar"],
                                       ["--url", "http://host/"], ["--url", "http://host/.."]])
def test_bad_arguments_are_one_line(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        Dataset.main(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument" in error and arguments[0] in error


@pytest.mark.parametrize("dest", ["file", "file/sub"])
def test_a_dest_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, dest):
    (tmp_path / "file").write_text("not a folder")
    archive = tmp_path / "data.tar"
    archive.write_bytes(make_tar({"data/a.txt": b"a"}))
    with pytest.raises(SystemExit) as exit_info:
        Dataset.run_cli(lambda: Dataset.main(["--archive", str(archive), "--dest", str(tmp_path / dest)]))
    assert exit_info.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "is a file")


def test_lfw_downloads_with_its_size_and_checksum_into_data(server, tmp_path, monkeypatch, capsys):
    lfw_tgz = io.BytesIO()
    with tarfile.open(fileobj=lfw_tgz, mode="w:gz") as tar:
        data = payload(9, 5_000)
        info = tarfile.TarInfo("lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    server.files["/lfw/lfw-deepfunneled.tgz"] = lfw_tgz.getvalue()
    official = Dataset.DATASETS["lfw"]
    monkeypatch.setitem(Dataset.DATASETS, "lfw", Dataset.KnownArchive(
        server.url + "/lfw/lfw-deepfunneled.tgz", official.dest, len(lfw_tgz.getvalue()), "0" * 64))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="checksum mismatch"):
        Dataset.main(["--dataset", "lfw"])
    monkeypatch.setitem(Dataset.DATASETS, "lfw", Dataset.KnownArchive(
        server.url + "/lfw/lfw-deepfunneled.tgz", official.dest, len(lfw_tgz.getvalue()),
        hashlib.sha256(lfw_tgz.getvalue()).hexdigest()))
    assert Dataset.main(["--dataset", "lfw"]) == 0
    assert (tmp_path / "data" / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").read_bytes() == data
    assert official.url == "https://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz" and official.dest == "data"


def test_lfw_size_and_checksum_are_those_of_the_official_archive():
    official = SHARED / "data" / "lfw-deepfunneled.tgz"
    if not official.is_file():
        pytest.skip("../shared/data/lfw-deepfunneled.tgz is absent")
    lfw = Dataset.DATASETS["lfw"]
    assert official.stat().st_size == lfw.size_bytes
    with open(official, "rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == lfw.sha256
