"""predict.py never writes through links, onto inputs or into a wrong format, whatever the paths."""
from __future__ import annotations

import os

import cv2
import pytest
from test_predict_inputs import colourful, run_predict


@pytest.fixture
def photos(tmp_path):
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), colourful(seed=len(name)))
    return tmp_path


def test_an_output_that_is_a_link_or_a_fifo_is_refused(photos, capsys):
    (photos / "link.txt").symlink_to(photos / "a.png")
    os.mkfifo(photos / "pipe.jsonl")
    before = (photos / "a.png").read_bytes()
    for output, fmt in (("link.txt", "table"), ("pipe.jsonl", "jsonl")):
        code, _, err = run_predict([str(photos / "b.png"), "--detector", "none", "--format", fmt,
                                    "--output", str(photos / output)], capsys)
        assert code == 1 and "is a link or a device" in err
    assert (photos / "link.txt").is_symlink() and (photos / "a.png").read_bytes() == before


def test_an_input_named_like_the_part_file_and_save_equal_to_output_are_refused(photos, capsys):
    part = photos / "out.jsonl.part"
    part.write_bytes((photos / "a.png").read_bytes())
    code, _, err = run_predict([str(photos / "a.png"), str(part), "--detector", "none", "--format", "jsonl",
                                "--output", str(photos / "out.jsonl")], capsys)
    assert code == 1 and "refusing to overwrite the input" in err and part.read_bytes() == (photos / "a.png").read_bytes()
    code, _, err = run_predict([str(photos / "a.png"), "--detector", "none", "--output", str(photos / "same.jpg"),
                                "--save", str(photos / "same.jpg")], capsys)
    assert code == 1 and "both" in err and not (photos / "same.jpg").exists()


def test_a_part_file_of_another_format_or_garbage_is_not_continued(photos, capsys):
    base = [str(photos / "a.png"), "--detector", "none", "--resume"]
    (photos / "g.jsonl.part").write_bytes(os.urandom(300).replace(b"\n", b"x") + b"\n")
    code, _, err = run_predict(base + ["--format", "jsonl", "--output", str(photos / "g.jsonl")], capsys)
    assert code == 1 and "is not jsonl output of predict.py" in err
    assert run_predict([str(photos / "b.png"), "--detector", "none", "--format", "jsonl", "--output",
                        str(photos / "mixed.out")], capsys)[0] == 0
    code, _, err = run_predict(base + ["--format", "csv", "--output", str(photos / "mixed.out")], capsys)
    assert code == 1 and "mixed.out is not csv output" in err and not (photos / "mixed.out.part").exists()


def test_a_link_in_the_save_folder_is_never_written_through(photos, capsys):
    victim = photos / "victim.jpg"
    victim.write_bytes(b"keep me")
    out = photos / "annotated"
    out.mkdir()
    (out / "a_annotated.jpg").symlink_to(victim)
    code, _, err = run_predict([str(photos / "a.png"), str(photos / "b.png"), "--detector", "none",
                                "--save", str(out)], capsys)
    assert code == 0, err
    assert victim.read_bytes() == b"keep me" and (out / "a_annotated.jpg").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["a_annotated.jpg", "a_annotated_2.jpg", "b_annotated.jpg"]
    assert sorted(p.name for p in photos.iterdir() if p.is_file()) == ["a.png", "b.png", "victim.jpg"]


def test_a_file_name_that_is_not_utf8_does_not_sink_a_csv_output(photos, capsys):
    odd = os.fsdecode(bytes(photos) + b"/bad\xffname.png")
    (photos / "a.png").rename(odd)
    code, _, err = run_predict([odd, str(photos / "b.png"), "--detector", "none", "--format", "csv",
                                "--output", str(photos / "ages.csv")], capsys)
    assert code == 0, err
    rows = (photos / "ages.csv").read_bytes().splitlines()
    assert len(rows) == 3 and rows[1].startswith(bytes(photos) + b"/bad\xffname.png,0,")


@pytest.mark.parametrize("name", ["out.gif", "out.jp2"])
def test_save_to_an_image_format_it_cannot_write_is_refused(photos, capsys, name):
    """--save out.gif once made a folder named out.gif; now it says which formats it writes."""
    code, _, err = run_predict([str(photos / "a.png"), "--detector", "none", "--save", str(photos / name)], capsys)
    assert code == 1 and "cannot write" in err and ".jpg" in err and not (photos / name).exists()


def test_save_to_one_image_name_for_several_inputs_is_refused(photos, capsys):
    code, _, err = run_predict([str(photos / "a.png"), str(photos / "b.png"), "--detector", "none",
                                "--save", str(photos / "two.jpg")], capsys)
    assert code == 1 and "give a folder" in err and not (photos / "two.jpg").exists()
    (photos / "made.jpg").mkdir()  # a folder the user named like an image is still a folder
    code, _, _ = run_predict([str(photos / "a.png"), "--detector", "none", "--save", str(photos / "made.jpg")], capsys)
    assert code == 0
    assert [p.name for p in (photos / "made.jpg").iterdir()] == ["a_annotated.jpg"]


def test_a_reader_that_stops_reading_stops_predict_quietly(tmp_path):
    """`predict.py photos/ | head -1`: the closed pipe is the reader's choice, not an error to report."""
    import subprocess
    import sys

    from conftest import ROOT

    for number in range(600):  # three chunks: results keep coming after the reader has gone
        cv2.imwrite(str(tmp_path / f"{number:03d}.png"), colourful(24, 24, seed=number))
    process = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), str(tmp_path), "--detector", "none",
                                "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # what head does after its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and first.startswith(b'{"image"')
    assert "error" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
