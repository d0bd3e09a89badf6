"""Fetch IMDB-WIKI end to end: download, extract, build cache.csv, check every image.

    python main.py                                   # WIKI (811 MB) into imdb/
    python main.py --dataset imdb --data-dir /data   # IMDB (7 GB)
    python main.py --url http://mirror/wiki_crop.tar # the same archive from a mirror

Each step is skipped when an earlier run finished it, so an interrupted fetch just runs again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import build_cache
import Dataset
import filescript
from utils import UserError, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(Dataset.DATASET_URLS), default="wiki",
                        help="which IMDB-WIKI part (default: wiki)")
    parser.add_argument("--data-dir", default="imdb", help="folder for the archive, images and cache (default: imdb)")
    parser.add_argument("--url", help="download the archive from this URL instead of the official site")
    parser.add_argument("--sha256", help="expected sha256 of the archive")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data_dir)
    url = args.url or Dataset.DATASET_URLS[args.dataset]
    archive = data_dir / Path(url.split("?")[0]).name

    print(f"[1/4] download {url}")
    Dataset.download_file(url, archive, args.sha256)
    print(f"[2/4] extract {archive}")
    Dataset.extract_archive(archive, data_dir)

    cache = data_dir / "cache.csv"
    mat_files = sorted(data_dir.glob(f"*/{args.dataset}.mat")) or sorted(data_dir.glob("**/*.mat"))
    if not mat_files:
        raise UserError(f"no .mat metadata file found under {data_dir} after extracting {archive}")
    if cache.is_file() and cache.stat().st_mtime >= mat_files[0].stat().st_mtime:
        print(f"[3/4] {cache} is up to date")
    else:
        print(f"[3/4] build {cache} from {mat_files[0]}")
        build_cache.main(["--mat", str(mat_files[0]), "--root", str(data_dir), "--out", str(cache)])

    print("[4/4] check images")
    status = filescript.main(["--cache", str(cache), "--root", str(data_dir),
                              "--write-clean", str(data_dir / "cache.clean.csv")])
    ready = cache if status == 0 else data_dir / "cache.clean.csv"
    print(f"\ndone: {ready}\nnext: python train.py --cache {ready} --root {data_dir} --out runs/{args.dataset}")
    return 0


if __name__ == "__main__":
    run_cli(main)
