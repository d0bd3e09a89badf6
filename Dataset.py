"""Download and extract face-dataset archives (IMDB-WIKI, LFW, or any tar), resumably and safely.

    python Dataset.py --dataset wiki                     # wiki_crop.tar (811 MB) into imdb/
    python Dataset.py --dataset lfw                      # lfw-deepfunneled.tgz (109 MB) into data/
    python Dataset.py --archive ../shared/data/UTKFace.tar.gz --dest data   # extract one already on disk

A transfer streams into NAME.part; a dropped connection resumes with an HTTP Range request, both
within the run (with back-off) and on the next run. Only a complete, verified file gets its name: the
server's Content-Range must match what was asked, the size (and the sha256 where one is known) must
match, and a web page, an empty body or anything that is not a tar is refused. A download must finish
within --deadline, never wait longer than --timeout for data, and never stay under --speed-limit bytes/s
for --speed-time seconds (curl's options of those names): a server that trickles is left at once, its
bytes kept in NAME.part for the next run.

Extraction is all or nothing: every member is read and checked (header checksums, the gzip/bzip2/xz
checksums at the end of the stream, a proper end of archive) in a staging folder inside --dest, then
moved into place, and only then does a marker record which archive (size and time) was extracted.
Links, devices, absolute paths and ".." are refused: dataset archives hold only files and folders.
One run at a time per archive and per --dest (lock files).

LFW gender labels are not in the official archive: the widely used lists (lfw_female_names.txt and
lfw_male_names.txt, one image file name per line) come separately; this script does not fetch them.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import http.client
import json
import lzma
import os
import re
import shutil
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from utils import (HelpFormatter, UserError, describe_os_error, file_sha256, float_between, locked, positive_float,
                   positive_int, require_packages, run_cli, sha256_hex, write_json)

if TYPE_CHECKING:  # requests is imported where used: without it, main() says what to install
    import requests



@dataclass(frozen=True)
class KnownArchive:
    url: str
    dest: str  # the folder it goes to by default
    size_bytes: int | None = None  # None: the publisher gives none
    sha256: str | None = None


# IMDB-WIKI publishes no sizes or checksums, so its archives are checked for being whole tars only.
# LFW's figures are those of the official lfw-deepfunneled.tgz.
DATASETS = {
    "wiki": KnownArchive("https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/static/wiki_crop.tar", "imdb"),
    "imdb": KnownArchive("https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/static/imdb_crop.tar", "imdb"),
    "lfw": KnownArchive("https://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz", "data", 108_738_543,
                        "d926161cbbaa693d97530bbf9e96f3a25b418722fa5ac7c2e6076218be4a82a4"),
}
DEFAULT_DEST = "imdb"  # for --url and --archive
CHUNK_BYTES = 1 << 16  # small reads: a dropped connection loses at most this much
GRACE_S = 600.0  # the default deadline: 10 minutes ...
SLOWEST_BYTES_PER_S = 64 * 1024  # ... plus one second per 64 KiB of the file
SPEED_LIMIT_BYTES_PER_S = 1024.0  # a transfer slower than this ...
SPEED_TIME_S = 60.0  # ... for this long is given up: any real link is far faster
COMPRESSED_OPENERS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}  # by magic bytes
CORRUPT_DATA_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)
WRITE_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)  # Windows has no O_NOFOLLOW


class BadArchive(UserError):
    """The archive itself is unsafe or damaged: extracting it again cannot help."""


class TransferError(Exception):
    """A failed attempt worth repeating; the part file keeps what arrived, if it can be resumed."""


class UnsafeMember(Exception):
    """A member no dataset archive has a reason to hold (a link, a device, a path leaving dest)."""


def http_url(text: str) -> str:
    """argparse type: an http(s) URL whose path ends in a usable file name."""
    parts = urlparse(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    try:
        archive_name(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """The download options Dataset.py and main.py share."""
    parser.add_argument("--sha256", type=sha256_hex, help="expected sha256 of the download (known for --dataset lfw)")
    parser.add_argument("--retries", type=positive_int, default=5, help="attempts per run before giving up")
    parser.add_argument("--timeout", type=positive_float, default=30.0, help="seconds to wait for any data")
    parser.add_argument("--deadline", type=positive_float,
                        help=f"seconds for the whole download; when not given, {GRACE_S / 60:.0f} minutes "
                             f"plus 1 s per {SLOWEST_BYTES_PER_S // 1024} KiB")
    parser.add_argument("--speed-limit", type=float_between(0.0), default=SPEED_LIMIT_BYTES_PER_S,
                        metavar="BYTES_PER_S", help="give up when the transfer stays slower than this (0: never)")
    parser.add_argument("--speed-time", type=positive_float, default=SPEED_TIME_S, metavar="SECONDS",
                        help="... for this many seconds")


def download_options(args: argparse.Namespace) -> dict:
    """fetch's keyword arguments from the options add_download_arguments added."""
    return {"sha256": args.sha256, "retries": args.retries, "timeout_s": args.timeout, "deadline_s": args.deadline,
            "speed_limit_bytes_per_s": args.speed_limit, "speed_time_s": args.speed_time}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(DATASETS), default="wiki", help="which known archive")
    source.add_argument("--url", type=http_url, help="download this archive URL instead")
    source.add_argument("--archive", help="extract this archive already on disk; download nothing")
    parser.add_argument("--dest", help=f"folder to download into and extract under; when not given, "
                                       f"{DEFAULT_DEST}, or {DATASETS['lfw'].dest} for --dataset lfw")
    add_download_arguments(parser)
    return parser.parse_args(argv)


# --- download ----------------------------------------------------------------------------------

def archive_name(url: str) -> str:
    """The file name a URL's path ends in; UserError when it has none a file could take."""
    name = Path(unquote(urlparse(url).path)).name
    if name in ("", ".", "..") or "\0" in name:
        raise UserError(f"cannot tell the archive's file name from the URL {url}")
    return name


def make_folder(folder: Path) -> None:
    """Create folder, or say in one line why it cannot be (a file in the way, a read-only disk)."""
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            raise UserError(f"cannot use {folder} as a folder: {path} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(describe_os_error(error)) from None


def archive_problem(path: Path) -> str | None:
    """Why path is not a tar (plain, gzip, bzip2 or xz) judging by its first bytes; None when it is one."""
    with open(path, "rb") as handle:
        head = handle.read(tarfile.BLOCKSIZE)
    if head.startswith(tuple(COMPRESSED_OPENERS)) or head[257:262] == b"ustar":
        return None
    return f"not a tar archive (it starts with {head[:24]!r})"


def _file_problem(path: Path, size_bytes: int | None, sha256: str | None,
                  content_problem: Callable[[Path], str | None] | None) -> str | None:
    """Why the finished file at path is not the one wanted; None when every known check passes."""
    actual_bytes = path.stat().st_size
    if size_bytes is not None and actual_bytes != size_bytes:
        return f"size mismatch ({actual_bytes} bytes, expected {size_bytes})"
    if sha256 and file_sha256(path) != sha256.lower():
        return "checksum mismatch"
    return content_problem(path) if content_problem else None


class _Deadline:
    """The whole download's time budget: deadline_s, or GRACE_S plus a second per SLOWEST_BYTES_PER_S."""

    def __init__(self, deadline_s: float | None, part_path: Path):
        self.started = time.monotonic()
        self.deadline_s, self.part_path = deadline_s, part_path

    def check(self, expected_bytes: int) -> None:
        allowed_s = self.deadline_s or GRACE_S + expected_bytes / SLOWEST_BYTES_PER_S
        if time.monotonic() - self.started > allowed_s:
            raise UserError(f"download too slow: not finished within {allowed_s:.0f} s (see --deadline); "
                            f"run again to resume from {self.part_path}")


class _MinimumRate:
    """curl's --speed-limit/--speed-time: a transfer that averages under bytes_per_s over window_s seconds
    is given up. A trickle of a byte now and then satisfies every per-read --timeout; this catches it."""

    def __init__(self, bytes_per_s: float, window_s: float, part_path: Path):
        self.bytes_per_s, self.window_s, self.part_path = bytes_per_s, window_s, part_path
        self.window_started, self.window_bytes = time.monotonic(), 0

    def count(self, received_bytes: int) -> None:
        self.window_bytes += received_bytes
        elapsed_s = time.monotonic() - self.window_started
        if elapsed_s < self.window_s:
            return
        if self.window_bytes < self.bytes_per_s * elapsed_s:
            raise UserError(f"download too slow: under {self.bytes_per_s:g} bytes/s for {self.window_s:g} s (see "
                            f"--speed-limit and --speed-time); run again to resume from {self.part_path}")
        self.window_started, self.window_bytes = time.monotonic(), 0


def _body_chunks(response: requests.Response, decode: bool) -> Iterator[bytes]:
    """The body as it arrives, decoded if the server compressed it anyway. read1 returns what one socket
    read got, so even a server that trickles a byte at a time reaches the deadline check."""
    import urllib3

    try:
        while chunk := response.raw.read1(CHUNK_BYTES, decode_content=decode):
            yield chunk
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as error:
        raise TransferError(str(error) or type(error).__name__) from None


def _settle_416(response: requests.Response, part_path: Path, have_bytes: int, size_bytes: int | None) -> None:
    """416 (range not satisfiable): fine only if the part file already holds the whole file."""
    total = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    total_bytes = int(total[1]) if total else size_bytes
    if have_bytes and have_bytes == total_bytes:
        return
    part_path.unlink(missing_ok=True)
    raise TransferError(f"the server refused to resume at byte {have_bytes}: starting again")


def _body_extent(response: requests.Response, url: str, part_path: Path, have_bytes: int,
                 size_bytes: int | None) -> tuple[int, int | None, bool]:
    """Where this response's body goes in the file, the file's whole size (None if unknown), and whether
    the body must be decoded (the server compressed it although asked not to)."""
    if "html" in response.headers.get("Content-Type", "").lower():
        raise UserError(f"{url} answered with a web page, not the file: check the URL")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip") and part_path.name.removesuffix(".part").endswith((".gz", ".tgz")):
        encoding = "identity"  # Apache labels a .tgz file's own bytes x-gzip: they are the file
    compressed = encoding not in ("", "identity")
    if compressed and any(part.strip() not in response.raw.CONTENT_DECODERS for part in encoding.split(",")):
        raise UserError(f"{url} sends the file with Content-Encoding {encoding!r}, which cannot be decoded here")
    if response.status_code == 206:
        content_range = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
        first, last = (int(content_range[1]), int(content_range[2])) if content_range else (-1, -1)
        total_bytes = int(content_range[3]) if content_range and content_range[3] != "*" else None
        if compressed or first not in (0, have_bytes) or (total_bytes is not None and last + 1 != total_bytes):
            part_path.unlink(missing_ok=True)  # a range of compressed bytes, or not the one asked for
            raise TransferError(f"the server sent {response.headers.get('Content-Range')!r} for bytes "
                                f"{have_bytes}-: starting again")
    else:
        length = response.headers.get("Content-Length", "")
        first, total_bytes = 0, int(length) if length.isdigit() and not compressed else None
    if size_bytes is not None and total_bytes is not None and total_bytes != size_bytes:
        raise UserError(f"{url} offers {total_bytes} bytes, not the {size_bytes} expected: a wrong URL or a "
                        f"changed file")
    total_bytes = size_bytes if total_bytes is None else total_bytes
    if total_bytes == 0:
        raise UserError(f"{url} sent an empty file")
    return first, total_bytes, compressed


def _fetch_once(url: str, part_path: Path, size_bytes: int | None, timeout_s: float, deadline: _Deadline,
                minimum_rate: _MinimumRate, progress: bool) -> None:
    """One HTTP attempt that writes into part_path; raises on any failure, keeping what can be resumed."""
    import requests

    have_bytes = part_path.stat().st_size if part_path.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # so that sizes and ranges count the file's own bytes
    if have_bytes:
        headers["Range"] = f"bytes={have_bytes}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if response.status_code == 416:
            _settle_416(response, part_path, have_bytes, size_bytes)
            return
        if response.status_code in (401, 403, 404, 410):
            raise UserError(f"download failed: HTTP {response.status_code} for {url}")
        response.raise_for_status()
        first, total_bytes, decode = _body_extent(response, url, part_path, have_bytes, size_bytes)
        free_bytes = shutil.disk_usage(part_path.parent).free
        if total_bytes is not None and total_bytes - first > free_bytes:  # say so now, not hours later
            raise UserError(f"no space left for {part_path}: {total_bytes - first} more bytes needed, "
                            f"{free_bytes} free")
        with open(part_path, "ab" if first else "wb") as out, tqdm(
            total=total_bytes, initial=first, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part_path.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            for chunk in _body_chunks(response, decode):
                out.write(chunk)
                bar.update(len(chunk))
                deadline.check(total_bytes or bar.n)
                minimum_rate.count(len(chunk))
    got_bytes = part_path.stat().st_size
    if got_bytes == 0:
        part_path.unlink()
        raise UserError(f"{url} sent an empty file")
    if total_bytes is not None and got_bytes != total_bytes:
        if got_bytes > total_bytes:
            part_path.unlink()
        raise TransferError(f"got {got_bytes} of {total_bytes} bytes")


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None, retries: int = 5,
                  timeout_s: float = 30.0, progress: bool = True, *, size_bytes: int | None = None,
                  deadline_s: float | None = None, speed_limit_bytes_per_s: float = SPEED_LIMIT_BYTES_PER_S,
                  speed_time_s: float = SPEED_TIME_S,
                  content_problem: Callable[[Path], str | None] | None = None) -> Path:
    """Download url to dest, resuming a dest.part left by an earlier attempt; verify and rename at the end.

    size_bytes and sha256, when given, must match, and content_problem(path) may refuse the finished
    bytes (it returns why). timeout_s bounds each wait for data, deadline_s the whole download (default:
    GRACE_S plus a second per SLOWEST_BYTES_PER_S); an attempt slower than speed_limit_bytes_per_s for
    speed_time_s ends the download (UserError), keeping the part file. One run per dest at a time (a lock
    file beside it).
    """
    import requests

    dest = Path(dest)
    make_folder(dest.parent)
    part_path = dest.with_name(dest.name + ".part")
    with locked(dest.with_name(f".{dest.name}.lock"), f"another run is downloading {dest}"):
        if dest.is_file() and _file_problem(dest, size_bytes, sha256, content_problem) is None:
            return dest  # already complete
        deadline = _Deadline(deadline_s, part_path)
        for attempt in range(1, retries + 1):
            try:
                minimum_rate = _MinimumRate(speed_limit_bytes_per_s, speed_time_s, part_path)
                _fetch_once(url, part_path, size_bytes, timeout_s, deadline, minimum_rate, progress)
                break
            except (TransferError, requests.RequestException) as error:
                if attempt == retries:
                    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                    then = f"run again to resume from {part_path}" if part_path.exists() else "try again later"
                    raise UserError(f"download failed after {retries} attempts: {reason} ({then})") from None
                time.sleep(min(2 ** (attempt - 1), 30))  # back off: 1, 2, 4 ... seconds
                deadline.check(size_bytes or (part_path.stat().st_size if part_path.exists() else 0))
            except OSError as error:  # the network's errors are caught above: this is the disk
                raise UserError(f"cannot write {part_path}: {describe_os_error(error)}") from None
        problem = _file_problem(part_path, size_bytes, sha256, content_problem)
        if problem:
            part_path.unlink()
            raise UserError(f"{problem} for {url}: the download was deleted, run again")
        os.replace(part_path, dest)
    return dest


# --- extraction --------------------------------------------------------------------------------

def _open_archive(archive: Path):
    """archive's tar bytes as a file object, decompressed by what its first bytes say it is."""
    with open(archive, "rb") as handle:
        head = handle.read(8)
    for magic, opener in COMPRESSED_OPENERS.items():
        if head.startswith(magic):
            return opener(archive, "rb")
    return open(archive, "rb")


def _inside(path: str, root: str) -> bool:
    """True when path, every link in it resolved, lies under the real folder root."""
    return os.path.commonpath([os.path.realpath(path), root]) == root


def _member_target(member: tarfile.TarInfo, root: str, reserved: set[str]) -> Path | None:
    """Where member goes under root (None for the archive's own "." folder); UnsafeMember otherwise.

    reserved: relative paths the member may not take (the archive itself, its marker, the lock).
    """
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or other special file"
        raise UnsafeMember(f"{member.name!r} is a {kind}; dataset archives hold only files and folders")
    parts = member.name.replace("\\", "/").split("/")  # a backslash is a separator to Windows
    if member.name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", member.name) or ".." in parts:
        raise UnsafeMember(f"the path {member.name!r} leaves the destination")
    relative = [part for part in parts if part not in ("", ".")]
    if not relative:
        return None
    if "/".join(relative) in reserved:
        raise UnsafeMember(f"{member.name!r} would replace the archive or its bookkeeping files")
    target = os.path.join(root, *relative)
    if not _inside(target, root):
        raise UnsafeMember(f"{member.name!r} resolves outside the destination")
    return Path(target)


def _check_archive_end(stream, end_offset: int) -> None:
    """After the last member only zero blocks may follow; reading them to the end of the stream makes
    gzip, bzip2 and xz verify their checksums. tarfile alone stops quietly at a damaged header."""
    stream.seek(end_offset)
    tail_bytes = 0
    while block := stream.read(CHUNK_BYTES):
        if block.strip(b"\0"):
            raise tarfile.ReadError(f"damaged header or stray data at byte {end_offset + tail_bytes}")
        tail_bytes += len(block)
    if tail_bytes < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("no end-of-archive marker: the archive is truncated")


def _extract_to_staging(archive: Path, staging: Path, reserved: set[str], progress: bool) -> None:
    """Write every member of archive under staging, reading the whole archive and checking it as it goes."""
    staging.mkdir()
    root, files = os.path.realpath(staging), 0
    with _open_archive(archive) as stream, tarfile.open(fileobj=stream, mode="r:") as tar, tqdm(
        desc=f"extract {archive.name}", unit="file", disable=not progress,
    ) as bar:
        while (member := tar.next()) is not None:
            target = _member_target(member, root, reserved)
            if target is None:
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with open(os.open(target, WRITE_NEW_FILE, 0o666), "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
            files += 1
            bar.update()
        _check_archive_end(stream, tar.offset)
    if not files:
        raise BadArchive(f"empty archive {archive}: it holds no files")


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename every extracted file from staging to the same place under dest, replacing older copies."""
    root = os.path.realpath(dest)
    for folder, _, file_names in os.walk(staging):
        target_folder = os.path.normpath(os.path.join(dest, os.path.relpath(folder, staging)))
        if not _inside(target_folder, root):  # a link in dest itself, e.g. left by an older extractor
            raise UserError(f"{target_folder} leads outside {dest} through a link: remove it and run again")
        os.makedirs(target_folder, exist_ok=True)
        for name in file_names:
            os.replace(os.path.join(folder, name), os.path.join(target_folder, name))


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract a tar (plain, gzip, bzip2 or xz) under dest, all or nothing; skip it when already done.

    Members go to a staging folder inside dest and move into place only once the whole archive has
    been read and checked; the marker naming the archive's size and mtime is written last, so a
    marker for another archive, or an interrupted run, means extracting again.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise UserError(f"archive {archive} not found")
    make_folder(dest)
    marker = dest / f".{archive.name}.extracted"
    archive_stat = archive.stat()
    identity = {"archive": archive.name, "size_bytes": archive_stat.st_size, "mtime_ns": archive_stat.st_mtime_ns}
    lock_path = dest / ".extract.lock"
    with locked(lock_path, f"another run is extracting into {dest}"):
        if _read_marker(marker) == identity:
            return dest  # extracted by an earlier run
        staging = dest / f".{archive.name}.staging"
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed
        reserved = {Path(os.path.relpath(os.path.realpath(path), os.path.realpath(dest))).as_posix()
                    for path in (archive, marker, lock_path, staging)}
        try:
            _extract_to_staging(archive, staging, reserved, progress)
            _move_into_place(staging, dest)
        except UnsafeMember as error:
            raise BadArchive(f"unsafe archive {archive}: {error}") from None
        except CORRUPT_DATA_ERRORS as error:
            raise BadArchive(f"corrupt archive {archive}: {error}") from None
        except OSError as error:
            if error.errno is None:  # gzip's and bzip2's complaints about their data carry no errno
                raise BadArchive(f"corrupt archive {archive}: {error}") from None
            raise UserError(f"cannot extract {archive} into {dest}: {describe_os_error(error)}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_json(marker, identity)
    return dest


def fetch(source: KnownArchive, dest: str | os.PathLike, sha256: str | None = None, retries: int = 5,
          timeout_s: float = 30.0, deadline_s: float | None = None, progress: bool = True, *,
          speed_limit_bytes_per_s: float = SPEED_LIMIT_BYTES_PER_S, speed_time_s: float = SPEED_TIME_S) -> Path:
    """Download source's archive into dest and extract it there; returns the archive's path.

    A download that proves unsafe or corrupt is deleted, so that the next run fetches it afresh.
    """
    archive = Path(dest) / archive_name(source.url)
    download_file(source.url, archive, sha256 or source.sha256, retries, timeout_s, progress,
                  size_bytes=source.size_bytes, deadline_s=deadline_s, speed_limit_bytes_per_s=speed_limit_bytes_per_s,
                  speed_time_s=speed_time_s, content_problem=archive_problem)
    try:
        extract_archive(archive, dest, progress)
    except BadArchive as error:
        archive.unlink(missing_ok=True)
        raise BadArchive(f"{error} (the download was deleted)") from None
    return archive


def main(argv=None) -> int:
    require_packages("Dataset.py", "requests")
    args = parse_args(argv)
    if args.archive:
        extract_archive(args.archive, args.dest or DEFAULT_DEST)
        print(f"extracted {args.archive} under {args.dest or DEFAULT_DEST}")
        return 0
    source = KnownArchive(args.url, DEFAULT_DEST) if args.url else DATASETS[args.dataset]
    dest = args.dest or source.dest
    fetch(source, dest, **download_options(args))
    print(f"downloaded {source.url} and extracted it under {dest}")
    return 0


if __name__ == "__main__":
    run_cli(main)
