"""Check that every image a cache.csv lists is a regular file on disk, non-empty and (with --decode) decodable.

    python filescript.py --cache imdb/cache.csv --root imdb
    python filescript.py --cache imdb/cache.csv --root imdb --decode --write-clean imdb/cache.clean.csv

Prints a summary and the first bad paths, writes every bad row to a report (default: CACHE.bad.csv),
and exits 0 when all images are fine, 1 otherwise. A cache without rows, or one whose images are all
missing (a wrong --root), is an error, with no report. FIFOs and devices are reported, never read (a
read would block or never end).
"""
from __future__ import annotations

import argparse
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
from tqdm import tqdm

from build_cache import load_cache, write_cache
from utils import HelpFormatter, UserError, check_output_file, positive_int, require_packages, run_cli, same_file

if TYPE_CHECKING:  # pandas is imported where used: without it, main() says what to install
    import pandas as pd

SHOW_BAD = 5  # bad paths printed in the summary; the report has them all


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--cache", default="imdb/cache.csv", help="cache.csv to check")
    parser.add_argument("--root", default="imdb", help="folder the cache's paths are relative to")
    parser.add_argument("--decode", action="store_true", help="also decode every image (slower, catches corrupt files)")
    parser.add_argument("--report", help="CSV of bad rows with the reason (default: CACHE.bad.csv)")
    parser.add_argument("--write-clean", metavar="OUT", help="write a cache without the bad rows to OUT")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 2, help="parallel checks")
    return parser.parse_args(argv)


def image_problem(path: Path, decode: bool) -> str | None:
    """Why an image is unusable ('missing', 'not a regular file', 'empty', 'undecodable'), or None if fine."""
    try:
        status = path.stat()
    except OSError:
        return "missing"
    if not stat.S_ISREG(status.st_mode):  # a FIFO or a device would block or never end when read
        return "not a regular file"
    if status.st_size == 0:
        return "empty"
    if decode and cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_8) is None:
        return "undecodable"
    return None


def check_cache(table: pd.DataFrame, root: str | Path, decode: bool, workers: int) -> pd.Series:
    """The problem of each row (None where the image is fine), in the table's order."""
    import pandas as pd

    root = Path(root)
    with ThreadPoolExecutor(workers) as pool:
        problems = list(tqdm(pool.map(lambda p: image_problem(root / p, decode), table["path"], chunksize=64),
                             total=len(table), desc="check images", unit="image", mininterval=0.5))
    return pd.Series(problems, index=table.index, dtype=object)


def main(argv=None) -> int:
    require_packages("filescript.py", "pandas")
    args = parse_args(argv)
    report = check_output_file(args.report or Path(args.cache).with_suffix(".bad.csv"), [args.cache])
    if args.write_clean:
        check_output_file(args.write_clean, [args.cache])
        if same_file(args.write_clean, report):
            raise UserError(f"--write-clean and the report are the same file {report}: choose another")
    if not Path(args.root).is_dir():
        raise UserError(f"--root {args.root}: no such folder")
    table = load_cache(args.cache)
    if table.empty:  # nothing checked is not a complete dataset
        raise UserError(f"{args.cache} lists no images: build it again (build_cache.py) or give another --cache")
    problems = check_cache(table, args.root, args.decode, args.workers)
    bad = problems.notna()
    if (problems == "missing").all():
        raise UserError(f"none of the {len(table)} images found under {args.root}: is --root right?")
    counts = problems[bad].value_counts()
    print(f"{len(table)} images listed, {len(table) - bad.sum()} fine, {bad.sum()} bad"
          + (f" ({', '.join(f'{n} {why}' for why, n in counts.items())})" if bad.any() else ""))
    if bad.any():
        for path, why in zip(table.loc[bad, "path"][:SHOW_BAD], problems[bad][:SHOW_BAD]):
            print(f"  {why}: {Path(args.root) / path}")
        write_cache(table[bad].assign(problem=problems[bad]), report)
        print(f"all bad rows: {report}")
    if args.write_clean:
        write_cache(table[~bad], args.write_clean)
        print(f"wrote {(~bad).sum()} good rows to {args.write_clean}")
    return 1 if bad.any() else 0


if __name__ == "__main__":
    run_cli(main)
