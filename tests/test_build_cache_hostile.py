"""build_cache.py against hostile input: broken .mat files, invalid caches, outputs that would clobber inputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io

import build_cache
from utils import UserError, run_cli

EARLIER_CACHE = "earlier,cache\n"


def run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: build_cache.main(argv), exit_code=2)
    return exit_info.value.code, capsys.readouterr().err


def cell(values) -> np.ndarray:
    array = np.empty((1, len(values)), dtype=object)
    for position, value in enumerate(values):
        array[0, position] = value
    return array


def wiki_fields(count: int = 2) -> dict:
    """The fields of a valid 'wiki' struct (as in the real file) for count photos."""
    return {
        "dob": np.full((1, count), 723671, np.int32),
        "photo_taken": np.full((1, count), 2009, np.uint16),
        "full_path": cell([np.array([f"01/{n}.jpg"]) for n in range(count)]),
        "gender": np.ones((1, count)),
        "name": cell([np.array(["someone"])] * count),
        "face_location": cell([np.array([[10.0, 20.0, 110.0, 120.0]])] * count),
        "face_score": np.full((1, count), 3.0),
        "second_face_score": np.full((1, count), np.nan),
    }


def struct_array(fields: dict, shape: tuple) -> np.ndarray:
    array = np.empty(shape, dtype=[(name, object) for name in fields])
    for name, value in fields.items():
        for position in np.ndindex(shape):
            array[name][position] = value
    return array


def broken(change: str):
    """The variables of a .mat file whose 'wiki' suffers one kind of damage."""
    fields = wiki_fields()
    if change == "dob as text":
        fields["dob"] = cell([np.array(["1981-05-05"])] * 2)
    elif change == "gender as text":
        fields["gender"] = np.array(["m", "f"])
    elif change == "empty face box":
        fields["face_location"] = cell([np.array([[10.0, 20.0, 110.0, 120.0]]), np.zeros((0, 0))])
    elif change == "double face box":
        fields["face_location"] = cell([np.arange(8.0).reshape(1, 8), np.array([[10.0, 20.0, 110.0, 120.0]])])
    elif change == "numeric path":
        fields["full_path"] = cell([np.array([[17.0]]), np.array(["01/b.jpg"])])
    elif change == "path leaving the image folder":
        fields["full_path"] = cell([np.array(["01/a.jpg"]), np.array(["../../../etc/passwd"])])
    elif change == "fields of different lengths":
        fields["gender"] = np.ones((1, 3))
    elif change == "no entries":
        fields = {name: (cell([]) if value.dtype == object else value[:, :0]) for name, value in fields.items()}
    elif change == "missing field":
        del fields["face_score"]
    elif change == "1 x 2 struct array":
        return {"wiki": struct_array(fields, (1, 2))}
    elif change == "0 x 0 struct array":
        return {"wiki": struct_array(fields, (0, 0))}
    elif change == "numbers, not a struct":
        return {"wiki": np.arange(6.0).reshape(2, 3)}
    elif change == "cell, not a struct":
        return {"wiki": cell([np.array([1.0]), np.array(["a"])])}
    elif change == "text, not a struct":
        return {"wiki": "wiki"}
    elif change == "another variable":
        return {"celebrities": fields}
    return {"wiki": fields}


BROKEN_MATS = ["dob as text", "gender as text", "empty face box", "double face box", "numeric path",
               "path leaving the image folder",
               "fields of different lengths", "no entries", "missing field", "1 x 2 struct array",
               "0 x 0 struct array", "numbers, not a struct", "cell, not a struct", "text, not a struct",
               "another variable"]


def test_the_valid_fixture_builds(tmp_path):
    """The damaged files below differ from this one only in what each case names."""
    scipy.io.savemat(tmp_path / "wiki.mat", broken("nothing"))
    assert build_cache.main(["--mat", str(tmp_path / "wiki.mat"), "--out", str(tmp_path / "cache.csv")]) == 0
    paths = build_cache.load_cache(tmp_path / "cache.csv")["path"].tolist()
    assert paths == ["wiki_crop/01/0.jpg", "wiki_crop/01/1.jpg"]


@pytest.mark.parametrize("change", BROKEN_MATS)
def test_broken_mat_one_line_exit_2_cache_untouched(tmp_path, capsys, change):
    mat = tmp_path / "wiki.mat"
    scipy.io.savemat(mat, broken(change))
    out = tmp_path / "cache.csv"
    out.write_text(EARLIER_CACHE)
    code, error = run(["--mat", str(mat), "--out", str(out)], capsys)
    assert code == 2 and error.startswith("error: ") and error.count("\n") == 1, error
    assert "unexpected" not in error  # a clear reason, not a caught crash
    assert out.read_text() == EARLIER_CACHE


@pytest.mark.parametrize("content", [b"", b"\x00" * 200, b"MATLAB 5.0 MAT-file" + b"\xff" * 200])
def test_not_a_mat_file(tmp_path, capsys, content):
    mat = tmp_path / "wiki.mat"
    mat.write_bytes(content)
    code, error = run(["--mat", str(mat), "--out", str(tmp_path / "cache.csv")], capsys)
    assert code == 2 and error.count("\n") == 1 and "unexpected" not in error
    assert not (tmp_path / "cache.csv").exists()


def test_mat_that_is_a_fifo_or_folder(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.mat")
    for path in (tmp_path / "fifo.mat", tmp_path):
        code, error = run(["--mat", str(path), "--out", str(tmp_path / "cache.csv")], capsys)
        assert code == 2 and "not a regular file" in error


# --- outputs --------------------------------------------------------------------------------------

def read_only_folder(tmp_path):
    """A folder this process cannot write into (root ignores permission bits: /sys refuses even root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        return build_cache.Path("/sys")
    return folder


def test_outputs_that_would_clobber_or_cannot_be_written(tmp_path, capsys):
    mat = tmp_path / "wiki.mat"
    scipy.io.savemat(mat, broken("nothing"))
    original = mat.read_bytes()
    (tmp_path / "a-file").write_text("x")
    cases = {
        str(mat): "refusing to overwrite the input",
        str(tmp_path): "is a folder",
        str(tmp_path / "a-file" / "cache.csv"): "is a file, not a folder",
        str(read_only_folder(tmp_path) / "cache.csv"): "cannot write",
    }
    for out, message in cases.items():
        code, error = run(["--mat", str(mat), "--out", out], capsys)
        assert code == 2 and message in error and error.count("\n") == 1, (out, error)
    assert mat.read_bytes() == original


def test_out_may_not_be_one_of_the_images(tmp_path, capsys):
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    image = folder / "30_0_0_1.jpg.chip.jpg"
    image.write_bytes(b"jpeg bytes")
    code, error = run(["--utkface", str(folder), "--out", str(image)], capsys)
    assert code == 2 and "refusing to overwrite the image" in error
    assert image.read_bytes() == b"jpeg bytes"


@pytest.mark.parametrize("argv", [["--min-score", "nan"], ["--min-score", "inf"], ["--min-score", "high"]])
def test_invalid_arguments_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cache.parse_args(["--mat", "wiki.mat", *argv])
    assert exit_info.value.code == 2 and "--min-score" in capsys.readouterr().err


def test_fifos_and_devices_among_the_images_are_skipped(tmp_path, capsys):
    """Reading a FIFO blocks forever and /dev/zero never ends: neither may reach a reader."""
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    (folder / "30_0_0_1.jpg.chip.jpg").write_bytes(b"a real file")
    os.mkfifo(folder / "31_0_0_2.jpg.chip.jpg")
    (folder / "32_0_0_3.jpg.chip.jpg").symlink_to("/dev/zero")
    out = tmp_path / "utk.csv"
    assert build_cache.main(["--utkface", str(folder), "--out", str(out)]) == 0
    assert build_cache.load_cache(out)["path"].tolist() == ["UTKFace/30_0_0_1.jpg.chip.jpg"]
    assert "2 entries skipped: not regular files" in capsys.readouterr().out


@pytest.mark.parametrize("names, message", [
    (b"\xff\xfe\x00binary", "cannot read the name list"),
    (b"lfw/Ann_Lee/Ann_Lee_0001.jpg\n", "is not a list of LFW image names"),
    (b"Ann Lee, female\n", "is not a list of LFW image names"),
    ("fifo", "not a regular file"),
])
def test_bad_lfw_name_lists(tmp_path, capsys, names, message):
    (tmp_path / "lfw" / "Ann_Lee").mkdir(parents=True)
    (tmp_path / "lfw" / "Ann_Lee" / "Ann_Lee_0001.jpg").write_bytes(b"a")
    (tmp_path / "male.txt").write_text("Bob_Roy_0001.jpg\n")
    if names == "fifo":
        os.mkfifo(tmp_path / "female.txt")
    else:
        (tmp_path / "female.txt").write_bytes(names)
    code, error = run(["--lfw", str(tmp_path / "lfw"), "--female-names", str(tmp_path / "female.txt"),
                       "--male-names", str(tmp_path / "male.txt"), "--out", str(tmp_path / "lfw.csv")], capsys)
    assert code == 2 and message in error and error.count("\n") == 1


# --- caches -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("path,age\na.jpg,30\n", "lacks columns gender"),
    ("age,gender\n30,1\n", "lacks columns path"),
    ("path,age,gender\na.jpg,30,1\n,30,1\n", "column 'path', row 2 (line 3): empty path"),
    ("path,age,gender\n/etc/passwd,30,1\n", "column 'path', row 1 (line 2): '/etc/passwd' is not a path inside"),
    ("path,age,gender\na/../../b.jpg,30,1\n", "'a/../../b.jpg' is not a path inside the root"),
    ("path,age,gender\na.jpg,30,1\nb.jpg,thirty,1\nc.jpg,x,1\n",
     "column 'age', row 2 (line 3): 'thirty' is not a number (2 such rows)"),
    ("path,age,gender\na.jpg,30,male\n", "column 'gender', row 1 (line 2): 'male' is not a number"),
    ("path,age,gender\na.jpg,30,2\n", "column 'gender', row 1 (line 2): 2 is not a gender"),
    ("path,age,gender\na.jpg,30,0.5\n", "0.5 is not a gender"),
    ("path,age,gender\na.jpg,30,1\nb.jpg,101,1\n", "column 'age', row 2 (line 3): 101 is not an age in years"),
    ("path,age,gender\na.jpg,-1,1\n", "-1 is not an age"),
    ("path,age,gender\na.jpg,inf,1\n", "inf is not an age"),
    ("path,age,gender\na.jpg,,\n", "no age and no gender: every row needs at least one label"),
    ("path,age,gender,face_x1\na.jpg,30,1,left\n", "column 'face_x1', row 1 (line 2): 'left' is not a number"),
    ("", "is not a readable CSV"),
    ('path,age,gender\n"a.jpg,30,1\n', "is not a readable CSV"),
])
def test_invalid_caches_are_refused_naming_column_and_row(tmp_path, text, message):
    cache = tmp_path / "cache.csv"
    cache.write_text(text)
    with pytest.raises(UserError) as error:
        build_cache.load_cache(cache)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_binary_cache_is_refused(tmp_path):
    cache = tmp_path / "cache.csv"
    cache.write_bytes(b"path,age,gender\n\xff\xfe\x00\x81,30,1\n")
    with pytest.raises(UserError, match="not a readable CSV"):
        build_cache.load_cache(cache)


def test_numeric_paths_stay_text(tmp_path):
    """A file may be called 123: it is read as the name '123', never as a number a path join chokes on."""
    cache = tmp_path / "cache.csv"
    cache.write_text("path,age,gender\n123,30,1\n0042,NaN,0\n")
    table = build_cache.load_cache(cache)
    assert table["path"].tolist() == ["123", "0042"] and np.isnan(table["age"][1])


def test_nothing_left_writes_nothing(tmp_path, capsys):
    """An empty or unlabelled folder is a mistake to report, not an empty cache to train on."""
    (tmp_path / "UTKFace").mkdir()
    (tmp_path / "UTKFace" / "holiday.jpg").write_bytes(b"not a UTKFace name")
    out = tmp_path / "utk.csv"
    out.write_text(EARLIER_CACHE)
    code, error = run(["--utkface", str(tmp_path / "UTKFace"), "--out", str(out)], capsys)
    assert code == 2 and "no usable faces are left" in error
    assert out.read_text() == EARLIER_CACHE
