"""filescript.py against hostile input: outputs that are inputs, a wrong --root, FIFOs and devices, bad arguments."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd
import pytest
from test_build_cache_hostile import read_only_folder

import filescript
from utils import run_cli


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: filescript.main(argv))
    captured = capsys.readouterr()
    error = "\n".join(line for line in captured.err.split("\n") if "check images" not in line)  # no tqdm
    return exit_info.value.code, captured.out, error


def make_cache(root, names=("good.jpg", "missing.jpg")):
    (root / "images").mkdir()
    cv2.imwrite(str(root / "images" / "good.jpg"), np.full((40, 40, 3), 128, np.uint8))
    cache = root / "cache.csv"
    pd.DataFrame({"path": [f"images/{n}" for n in names], "age": 30, "gender": 1}).to_csv(cache, index=False)
    return cache


@pytest.mark.parametrize("option", ["--report", "--write-clean"])
def test_output_that_is_the_cache_is_refused(tmp_path, capsys, option):
    cache = make_cache(tmp_path)
    before = cache.read_bytes()
    code, _, error = run(["--cache", str(cache), "--root", str(tmp_path), option, str(cache)], capsys)
    assert code == 1 and "refusing to overwrite the input" in error and error.count("\n") == 1
    assert cache.read_bytes() == before


def test_clean_cache_and_report_cannot_share_a_file(tmp_path, capsys):
    cache = make_cache(tmp_path)
    same = str(tmp_path / "out.csv")
    code, _, error = run(["--cache", str(cache), "--root", str(tmp_path), "--report", same, "--write-clean", same],
                         capsys)
    assert code == 1 and "--write-clean and the report are the same file" in error
    assert not (tmp_path / "out.csv").exists()


def test_outputs_that_cannot_be_files(tmp_path, capsys):
    cache = make_cache(tmp_path)
    (tmp_path / "a-file").write_text("x")
    cases = {
        str(tmp_path / "images"): "is a folder",
        str(tmp_path / "a-file" / "report.csv"): "is a file, not a folder",
        str(read_only_folder(tmp_path) / "report.csv"): "cannot write",
    }
    for report, message in cases.items():
        code, _, error = run(["--cache", str(cache), "--root", str(tmp_path), "--report", report], capsys)
        assert code == 1 and message in error and error.count("\n") == 1, (report, error)


def test_wrong_root_is_named(tmp_path, capsys):
    cache = make_cache(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    code, _, error = run(["--cache", str(cache), "--root", str(tmp_path / "elsewhere")], capsys)
    assert code == 1
    assert error == f"error: none of the 2 images found under {tmp_path / 'elsewhere'}: is --root right?\n"
    assert not (tmp_path / "cache.bad.csv").exists()
    code, _, error = run(["--cache", str(cache), "--root", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and "no such folder" in error


def test_fifos_and_devices_are_reported_not_read(tmp_path, capsys):
    """A FIFO would block a reader forever and /dev/zero never ends: both are bad rows, found without reading."""
    cache = make_cache(tmp_path, ("good.jpg", "fifo.jpg", "zero.jpg", "folder.jpg"))
    os.mkfifo(tmp_path / "images" / "fifo.jpg")
    (tmp_path / "images" / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "images" / "folder.jpg").mkdir()
    code, out, _ = run(["--cache", str(cache), "--root", str(tmp_path), "--decode"], capsys)
    assert code == 1 and "4 images listed, 1 fine, 3 bad (3 not a regular file)" in out
    assert sorted(pd.read_csv(tmp_path / "cache.bad.csv")["path"]) == [
        "images/fifo.jpg", "images/folder.jpg", "images/zero.jpg"]


def test_invalid_cache_values_are_one_line(tmp_path, capsys):
    cache = make_cache(tmp_path)
    cache.write_text("path,age,gender\nimages/good.jpg,30,3\n")
    code, _, error = run(["--cache", str(cache), "--root", str(tmp_path)], capsys)
    assert code == 1 and error.count("\n") == 1 and "column 'gender', row 1 (line 2): 3 is not a gender" in error


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--workers", "-3"], ["--workers", "many"]])
def test_invalid_arguments_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        filescript.parse_args(argv)
    assert exit_info.value.code == 2 and "--workers" in capsys.readouterr().err


def test_a_cache_without_rows_is_an_error_not_a_complete_dataset(tmp_path, capsys):
    cache = make_cache(tmp_path, names=())
    code, out, error = run(["--cache", str(cache), "--root", str(tmp_path)], capsys)
    assert code == 1 and error.startswith("error: ") and "lists no images" in error and error.count("\n") == 1
    assert "0 images listed" not in out and not (tmp_path / "cache.bad.csv").exists()
