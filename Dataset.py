"""Download and extract the IMDB-WIKI face archives (or any other tar), resumably and safely.

    python Dataset.py --dataset wiki                     # wiki_crop.tar (811 MB) into imdb/
    python Dataset.py --dataset imdb --dest /data/imdb   # imdb_crop.tar (7 GB)
    python Dataset.py --archive ../shared/data/UTKFace.tar.gz --dest data   # extract one already on disk

A transfer streams into NAME.part; a dropped connection resumes with an HTTP Range request, both
within the run (with back-off) and on the next run. Only a complete, verified file gets its name.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tarfile
import time
from pathlib import Path

import requests
from tqdm import tqdm

from utils import UserError, run_cli

DATASET_URLS = {
    "wiki": "https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/static/wiki_crop.tar",
    "imdb": "https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/static/imdb_crop.tar",
}
CHUNK_BYTES = 1 << 16  # small reads: a dropped connection loses at most this much


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(DATASET_URLS), default="wiki", help="which IMDB-WIKI archive")
    source.add_argument("--url", help="download this archive URL instead")
    source.add_argument("--archive", help="extract this archive already on disk; download nothing")
    parser.add_argument("--dest", default="imdb", help="folder to download into and extract under (default: imdb)")
    parser.add_argument("--sha256", help="expected sha256 of the download")
    parser.add_argument("--retries", type=int, default=5, help="attempts per run before giving up (default: 5)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without data before a retry (default: 30)")
    return parser.parse_args(argv)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_once(url: str, part_path: Path, timeout_s: float, progress: bool) -> None:
    """One HTTP attempt that appends to part_path; raises on any failure, leaving what arrived."""
    have_bytes = part_path.stat().st_size if part_path.exists() else 0
    headers = {"Range": f"bytes={have_bytes}-"} if have_bytes else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if response.status_code == 416:  # the part file already holds everything the server has
            return
        if response.status_code in (404, 401, 403, 410):
            raise UserError(f"download failed: HTTP {response.status_code} for {url}")
        response.raise_for_status()
        if have_bytes and response.status_code != 206:
            have_bytes = 0  # the server ignored Range: start the file again from its first byte
        remaining = int(response.headers.get("Content-Length", 0)) or None
        total_bytes = have_bytes + remaining if remaining is not None else None
        with open(part_path, "ab" if have_bytes else "wb") as out, tqdm(
            total=total_bytes, initial=have_bytes, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part_path.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
        if total_bytes is not None and part_path.stat().st_size != total_bytes:
            raise requests.ConnectionError(f"got {part_path.stat().st_size} of {total_bytes} bytes")


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None, retries: int = 5,
                  timeout_s: float = 30.0, progress: bool = True) -> Path:
    """Download url to dest, resuming a dest.part left by an earlier attempt; verify and rename at the end."""
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or _sha256_of(dest) == sha256.lower()):
        return dest  # already complete
    dest.parent.mkdir(parents=True, exist_ok=True)
    part_path = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, part_path, timeout_s, progress)
            break
        except UserError:
            raise
        except (requests.RequestException, OSError) as error:
            if isinstance(error, OSError) and not isinstance(error, requests.RequestException) and error.errno:
                raise UserError(f"cannot write {part_path}: {error.strerror}") from None  # e.g. disk full
            if attempt == retries:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise UserError(f"download failed after {retries} attempts: {reason} "
                                f"(run again to resume from {part_path})") from None
            time.sleep(min(2 ** (attempt - 1), 30))  # back off: 1, 2, 4 ... seconds
    if sha256 and _sha256_of(part_path) != sha256.lower():
        part_path.unlink()
        raise UserError(f"checksum mismatch for {url}: the download was deleted, run again")
    os.replace(part_path, dest)
    return dest


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract a tar (optionally compressed) under dest, refusing members that would escape it."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise UserError(f"archive {archive} not found")
    done_marker = dest / f".{archive.name}.extracted"
    if done_marker.exists():
        return dest  # extracted by an earlier run
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                if member.name.startswith(("/", "\\")):  # the data filter would only strip the slash
                    raise tarfile.FilterError(f"absolute path {member.name!r}")
            for member in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                # The "data" filter rejects absolute paths, "..", links leaving dest and device files.
                tar.extract(member, dest, filter="data")
    except tarfile.FilterError as error:
        raise UserError(f"unsafe archive {archive}: {error}") from None
    except (tarfile.TarError, EOFError) as error:
        raise UserError(f"cannot extract {archive}: {error}") from None
    except OSError as error:
        raise UserError(f"cannot extract {archive} into {dest}: {error.strerror or error}") from None
    done_marker.touch()
    return dest


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.archive:
        extract_archive(args.archive, args.dest)
        print(f"extracted {args.archive} under {args.dest}")
        return 0
    url = args.url or DATASET_URLS[args.dataset]
    archive = Path(args.dest) / Path(requests.utils.urlparse(url).path).name
    download_file(url, archive, args.sha256, args.retries, args.timeout)
    extract_archive(archive, args.dest)
    print(f"downloaded {url} and extracted it under {args.dest}")
    return 0


if __name__ == "__main__":
    run_cli(main)
