"""Fetch IMDB-WIKI end to end: download, extract, build cache.csv, check every image.

    python main.py                                   # WIKI (811 MB) into imdb/
    python main.py --dataset imdb --data-dir /data   # IMDB (7 GB)
    python main.py --url http://mirror/wiki_crop.tar # the same archive from a mirror

Each step is skipped when an earlier run finished it, so an interrupted fetch just runs again: the
download resumes, and an archive found unsafe or corrupt is deleted so that the next run fetches it
afresh (see Dataset.py for every check made on the way).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import build_cache
import Dataset
import filescript
from utils import HelpFormatter, UserError, require_packages, run_cli

IMDB_WIKI_PARTS = ("wiki", "imdb")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", choices=IMDB_WIKI_PARTS, default="wiki", help="which IMDB-WIKI part")
    parser.add_argument("--data-dir", default="imdb", help="folder for the archive, images and cache")
    parser.add_argument("--url", type=Dataset.http_url, help="download the archive from this URL instead")
    Dataset.add_download_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    require_packages("main.py", "requests", "pandas", "scipy")
    args = parse_args(argv)
    data_dir = Path(args.data_dir)
    source = Dataset.KnownArchive(args.url, args.data_dir) if args.url else Dataset.DATASETS[args.dataset]

    print(f"[1/3] download and extract {source.url}")
    archive = Dataset.fetch(source, data_dir, **Dataset.download_options(args))

    cache = data_dir / "cache.csv"
    mat_files = sorted(data_dir.glob(f"*/{args.dataset}.mat")) or sorted(data_dir.glob("**/*.mat"))
    if not mat_files:
        raise UserError(f"no .mat metadata file found under {data_dir} after extracting {archive}")
    if cache.is_file() and cache.stat().st_mtime >= mat_files[0].stat().st_mtime:
        print(f"[2/3] {cache} is up to date")
    else:
        print(f"[2/3] build {cache} from {mat_files[0]}")
        build_cache.main(["--mat", str(mat_files[0]), "--root", str(data_dir), "--out", str(cache)])

    print("[3/3] check images")
    status = filescript.main(["--cache", str(cache), "--root", str(data_dir),
                              "--write-clean", str(data_dir / "cache.clean.csv")])
    ready = cache if status == 0 else data_dir / "cache.clean.csv"
    print(f"\ndone: {ready}\nnext: python train.py --cache {ready} --root {data_dir} --out runs/{args.dataset}")
    return 0


if __name__ == "__main__":
    run_cli(main)
