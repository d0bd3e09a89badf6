"""bench.py: what a user can get wrong ends in one line of its own, before any measuring starts."""
from __future__ import annotations

import time

import pytest
from conftest import ROOT

import bench
from utils import UserError, run_cli


def run(argv, capsys) -> tuple[int, str]:
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: bench.main(argv))
    assert time.monotonic() - started < 10  # refused up front, not after minutes of measuring
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unexpected" not in error and "Traceback" not in error, error
    return exit_info.value.code, error


@pytest.mark.parametrize("arguments, message", [
    (["--photo", "missing.jpg"], "error: --photo missing.jpg: no such file"),
    (["--images", "missing"], "error: --images missing: no such folder"),
    (["--photo", str(ROOT / "README.md"), "--model", "missing.onnx"], "error: --model missing.onnx: no such file"),
])
def test_missing_inputs_are_named(arguments, message, capsys):
    code, error = run(["--quick", *arguments], capsys)
    assert code == 1 and error.startswith(message)


@pytest.mark.parametrize("arguments", [["--image-size", "0"], ["--image-size", "30"], ["--batch-size", "0"],
                                       ["--width", "0"]])
def test_impossible_sizes_are_argument_errors(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--quick", *arguments])
    assert exit_info.value.code == 2 and arguments[0] in capsys.readouterr().err


def test_a_photo_predict_py_cannot_read_gives_its_reason(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_text("not an image")
    with pytest.raises(UserError, match=r"predict.py .*photo.jpg failed, so no figure for it: .*not an image"):
        bench.predict_cli_seconds([str(photo), "--detector", "none"])
