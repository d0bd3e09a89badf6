"""build_cache.py: IMDB-WIKI metadata and UTKFace names to cache.csv."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from conftest import write_wiki_mat

import build_cache
from utils import run_cli


def run(argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: build_cache.main(argv), exit_code=2)
    return exit_info.value.code


def test_age_from_datenum_assumes_mid_year_photo():
    def datenum(year, month, day):  # MATLAB datenum = Python ordinal + 366
        return date(year, month, day).toordinal() + 366

    born = np.array([datenum(1981, 5, 5), datenum(1948, 6, 30), datenum(1948, 7, 1), datenum(1948, 12, 31)])
    ages = build_cache.age_at_photo(born, np.array([2009, 1990, 1990, 1990]))
    assert ages.tolist() == [28, 42, 41, 41]  # born from July on: one year younger at a mid-year photo


def test_rules_drop_and_count(tmp_path, capsys):
    base = dict(dob=723671, photo_taken=2009, gender=1.0, face_location=[10, 20, 110, 120], face_score=3.0)
    rows = [
        {**base, "full_path": "01/keep.jpg"},
        {**base, "full_path": "01/noface.jpg", "face_score": float("-inf")},
        {**base, "full_path": "01/weak.jpg", "face_score": 0.5},
        {**base, "full_path": "01/two.jpg", "second_face_score": 2.5},
        {**base, "full_path": "01/nogender.jpg", "gender": float("nan")},
        {**base, "full_path": "01/unborn.jpg", "photo_taken": 1970},
        {**base, "full_path": "01/female.jpg", "gender": 0.0},
    ]
    write_wiki_mat(tmp_path / "wiki.mat", rows)
    out = tmp_path / "cache.csv"
    assert build_cache.main(["--mat", str(tmp_path / "wiki.mat"), "--out", str(out)]) == 0
    cache = pd.read_csv(out)
    assert cache["path"].tolist() == ["wiki_crop/01/keep.jpg", "wiki_crop/01/female.jpg"]
    assert cache.columns.tolist() == build_cache.CACHE_COLUMNS
    assert cache.iloc[0][["age", "gender", "face_x1", "face_y1", "face_x2", "face_y2"]].tolist() == [28, 1, 10, 20, 110, 120]
    assert cache.iloc[1]["gender"] == 0
    printed = capsys.readouterr().out
    assert "dropped      2 rows: face_score" in printed and "dropped      1 rows: a second face" in printed
    assert "dropped      1 rows: gender unknown" in printed and "dropped      1 rows: age outside" in printed
    assert build_cache.main(["--mat", str(tmp_path / "wiki.mat"), "--out", str(out), "--allow-second-face"]) == 0
    assert "wiki_crop/01/two.jpg" in pd.read_csv(out)["path"].tolist()


def test_real_wiki_mat(wiki_mat, tmp_path, capsys):
    out = tmp_path / "cache.csv"
    assert build_cache.main(["--mat", str(wiki_mat), "--out", str(out)]) == 0
    cache = pd.read_csv(out).set_index("path")
    printed = capsys.readouterr().out
    assert "62328 entries" in printed and "wrote 38138 rows" in printed
    # Rows checked by hand against the file names' birth dates and photo years.
    first = cache.loc["wiki_crop/17/10000217_1981-05-05_2009.jpg"]
    assert (first["age"], first["gender"]) == (28, 1)
    assert (first["source"], first["group"]) == ("wiki", 10000217)  # the person: the file name's first part
    assert first[["face_x1", "face_y1", "face_x2", "face_y2"]].round(2).tolist() == [111.29, 111.29, 252.67, 252.67]
    assert cache.loc["wiki_crop/12/100012_1948-07-03_2008.jpg", "age"] == 59  # born in July: one year less
    assert "wiki_crop/48/10000548_1925-04-04_1964.jpg" not in cache.index  # a second face was found
    assert cache["age"].between(0, 100).all() and set(cache["gender"]) == {0, 1}
    assert (cache["face_score"] >= 1.0).all()


def test_utkface_names(tmp_path, capsys):
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    for name in ["26_0_1_20170116.jpg.chip.jpg", "3_1_2_20161219.jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg"]:
        (folder / name).write_bytes(name.encode())
    out = tmp_path / "utk.csv"
    assert build_cache.main(["--utkface", str(folder), "--out", str(out)]) == 0
    cache = pd.read_csv(out)
    assert cache[["path", "age", "gender", "race", "source"]].values.tolist() == [
        ["UTKFace/26_0_1_20170116.jpg.chip.jpg", 26, 1, 1, "utkface"],  # UTKFace 0 = male, cache 1 = male
        ["UTKFace/3_1_2_20161219.jpg.chip.jpg", 3, 0, 2, "utkface"],
    ]
    assert cache["face_x1"].isna().all()
    assert "1 malformed names skipped" in capsys.readouterr().out
    assert cache["content_hash"].tolist() == [hashlib.sha256(p.split("/")[1].encode()).hexdigest() for p in cache["path"]]
    assert (cache["group"] == cache["content_hash"]).all()  # no identity: the image itself is the group


def test_utkface_detection_adds_landmarks(utkface_dir, yunet_path, tmp_path):
    out = tmp_path / "utk.csv"
    assert build_cache.main(["--utkface", str(utkface_dir), "--out", str(out), "--detect"]) == 0
    cache = pd.read_csv(out)
    listed = len(list(utkface_dir.iterdir()))
    assert len(cache) >= 0.95 * listed  # faces are found in nearly every chip
    assert cache["right_eye_x"].notna().all()
    assert (cache["right_eye_x"] < cache["left_eye_x"]).all()  # subject's right eye on the image's left


@pytest.mark.parametrize("content", [None, b"this is not a mat file", "no_fields"])
def test_bad_mat_exits_2(tmp_path, capsys, content):
    path = tmp_path / "wiki.mat"
    if content == "no_fields":
        scipy.io.savemat(path, {"wiki": {"dob": np.array([[1]])}})
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "cache.csv"
    out.write_text("earlier,cache\n")
    assert run(["--mat", str(path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert out.read_text() == "earlier,cache\n"  # nothing on disk was touched


def test_detection_inside_metadata_boxes(utkface_dir, yunet_path, tmp_path):
    """IMDB-WIKI rows keep their own face box; --detect adds the landmarks of the face inside it."""
    import cv2

    from faces import FaceDetector

    chips = sorted(utkface_dir.iterdir())[:2]
    photo = np.full((300, 600, 3), 160, np.uint8)
    for chip, x in zip(chips, (40, 360)):
        photo[50:250, x:x + 200] = cv2.imread(str(chip))
    cv2.imwrite(str(tmp_path / "two.png"), photo)
    table = build_cache.table_with_columns({
        "path": ["two.png", "two.png"], "age": [30, 40], "gender": [1, 0], "face_x1": [40.0, 360.0],
        "face_y1": [50.0, 50.0], "face_x2": [240.0, 560.0], "face_y2": [250.0, 250.0], "face_score": [3.0, 3.0]})
    result = pd.DataFrame(build_cache.add_landmarks(table, tmp_path, FaceDetector("yunet", str(yunet_path))))
    assert result[build_cache.BOX_COLUMNS].values.tolist() == pd.DataFrame(table)[build_cache.BOX_COLUMNS].values.tolist()
    for (_, row), left in zip(result.iterrows(), (40, 360)):  # each row's eyes lie inside its own box
        assert left < row["right_eye_x"] < row["left_eye_x"] < left + 200 and 50 < row["right_eye_y"] < 250


def write_utkface(folder, images: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in images.items():
        (folder / name).write_bytes(content)


def test_exact_duplicates_and_ages_over_100(tmp_path, capsys):
    """Copies with the same labels count once, copies that disagree all go, and so do ages above 100."""
    write_utkface(tmp_path / "UTKFace", {
        "30_0_0_1.jpg.chip.jpg": b"same labels", "30_0_0_2.jpg.chip.jpg": b"same labels",
        "30_0_0_3.jpg.chip.jpg": b"same labels",
        "30_0_0_4.jpg.chip.jpg": b"disagree", "31_0_0_5.jpg.chip.jpg": b"disagree",
        "40_1_0_6.jpg.chip.jpg": b"unique", "101_1_0_7.jpg.chip.jpg": b"too old",
    })
    out = tmp_path / "utk.csv"
    assert build_cache.main(["--utkface", str(tmp_path / "UTKFace"), "--out", str(out)]) == 0
    assert pd.read_csv(out)["path"].tolist() == ["UTKFace/30_0_0_1.jpg.chip.jpg", "UTKFace/40_1_0_6.jpg.chip.jpg"]
    printed = capsys.readouterr().out
    assert "dropped      2 rows: extra copies of a byte-identical image with the same labels (1 groups" in printed
    assert "dropped      2 rows: byte-identical copies whose labels disagree (1 groups)" in printed
    assert "dropped      1 rows: age outside 0-100" in printed


def write_lfw(root):
    for name, content in [("Ann_Lee", b"a"), ("Ann_Lee", b"b"), ("Bob_Roy", b"c"), ("Kim_Both", b"d"),
                          ("Nobody_Listed", b"e")]:
        folder = root / "lfw" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}_{len(list(folder.iterdir())) + 1:04d}.jpg").write_bytes(content)
    # The real lists have Windows line ends and no final newline; a few names are in both.
    (root / "female.txt").write_bytes(b"Ann_Lee_0001.jpg\r\nAnn_Lee_0002.jpg\r\nKim_Both_0001.jpg\r\n\r\n")
    (root / "male.txt").write_bytes(b"Bob_Roy_0001.jpg\r\nKim_Both_0001.jpg\r\nNot_Here_0001.jpg")
    return ["--lfw", str(root / "lfw"), "--female-names", str(root / "female.txt"),
            "--male-names", str(root / "male.txt")]


def test_lfw_gender_lists(tmp_path, capsys):
    out = tmp_path / "lfw.csv"
    assert build_cache.main([*write_lfw(tmp_path), "--out", str(out)]) == 0
    cache = build_cache.load_cache(out)
    assert cache[["path", "gender", "group", "source"]].values.tolist() == [
        ["lfw/Ann_Lee/Ann_Lee_0001.jpg", 0, "Ann_Lee", "lfw"],
        ["lfw/Ann_Lee/Ann_Lee_0002.jpg", 0, "Ann_Lee", "lfw"],
        ["lfw/Bob_Roy/Bob_Roy_0001.jpg", 1, "Bob_Roy", "lfw"],
    ]
    assert cache["age"].isna().all() and cache["age"].dtype == np.float64  # LFW has no ages
    assert cache["content_hash"].tolist() == [hashlib.sha256(c).hexdigest() for c in (b"a", b"b", b"c")]
    printed = capsys.readouterr().out
    assert "dropped      1 rows: named in both lists (1 names)" in printed
    assert "dropped      1 rows: in neither list" in printed


@pytest.mark.parametrize("argv, message", [
    (["--lfw", "x"], "--lfw needs --female-names and --male-names"),
    (["--utkface", "x", "--male-names", "m"], "go with --lfw"),
])
def test_lfw_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cache.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_lfw_detection_keeps_the_central_face(utkface_dir, yunet_path, tmp_path):
    """A bigger face off-centre (a bystander) loses to the subject in the middle of an LFW photo."""
    import cv2

    from faces import FaceDetector

    chips = sorted(utkface_dir.iterdir())[:2]
    photo = np.full((400, 400, 3), 160, np.uint8)
    photo[0:160, 0:160] = cv2.resize(cv2.imread(str(chips[0])), (160, 160))  # bystander, top left
    photo[150:250, 150:250] = cv2.resize(cv2.imread(str(chips[1])), (100, 100))  # subject, centred
    cv2.imwrite(str(tmp_path / "photo.png"), photo)
    table = build_cache.table_with_columns({"path": ["photo.png"], "gender": [1]})
    result = build_cache.add_landmarks(table, tmp_path, FaceDetector("yunet", str(yunet_path)))
    x1, y1, x2, y2 = (result[column][0] for column in build_cache.BOX_COLUMNS)
    assert 140 < (x1 + x2) / 2 < 260 and 140 < (y1 + y2) / 2 < 260 and x2 - x1 < 140


def test_load_cache_partial_labels_and_older_files(tmp_path):
    cache = tmp_path / "cache.csv"
    cache.write_text("path,age,gender\na.jpg,30,\nb.jpg,,1\nc.jpg,40,0\n")  # an older file: no new columns
    table = build_cache.load_cache(cache)
    assert table["age"].tolist()[::2] == [30, 40] and np.isnan(table["age"][1])
    assert np.isnan(table["gender"][0]) and table["gender"].tolist()[1:] == [1, 0]
    assert table["source"].tolist() == ["", "", ""] and table["race"].isna().all()
    assert table[build_cache.LANDMARK_COLUMNS].isna().all().all()


def test_written_cache_reads_back_exactly(tmp_path):
    """Text that needs CSV quoting, unknown labels and float32 detector output survive a round trip."""
    landmark = np.float32(123.456789)
    table = build_cache.table_with_columns({
        "path": ['a,b "c".jpg', "plain.jpg"], "age": [28, np.nan], "gender": [np.nan, 1],
        "face_score": [0.123456789, 2.0], "source": "lfw", "group": ["x\ny", "z"],
        "right_eye_x": np.array([landmark, np.nan], np.float32)})
    build_cache.write_cache(table, tmp_path / "cache.csv")
    assert (tmp_path / "cache.csv").read_text().splitlines()[1].startswith('"a,b ""c"".jpg",28,,')
    cache = build_cache.load_cache(tmp_path / "cache.csv")
    assert cache["path"].tolist() == ['a,b "c".jpg', "plain.jpg"] and cache["group"].tolist() == ["x\ny", "z"]
    assert np.float32(cache["right_eye_x"][0]) == landmark and np.isnan(cache["right_eye_x"][1])
    assert cache["face_score"].tolist() == [0.123456789, 2.0] and cache["source"].tolist() == ["lfw", "lfw"]


def test_mat_path_does_not_import_pandas(tmp_path):
    """pandas' import alone costs more than the rest of a wiki.mat build (the floor is loading the .mat)."""
    write_wiki_mat(tmp_path / "wiki.mat", [dict(dob=723671, photo_taken=2009, gender=1.0, full_path="01/a.jpg",
                                                face_location=[10, 20, 110, 120], face_score=3.0)])
    code = ("import sys, build_cache; build_cache.main(['--mat', sys.argv[1], '--out', sys.argv[2]]); "
            "assert 'pandas' not in sys.modules and 'tqdm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "wiki.mat"), str(tmp_path / "cache.csv")],
                   cwd=Path(build_cache.__file__).parent, check=True, capture_output=True)
    assert (tmp_path / "cache.csv").read_text().splitlines()[1].startswith("wiki_crop/01/a.jpg,28,1,10,20,110,120,3,")
