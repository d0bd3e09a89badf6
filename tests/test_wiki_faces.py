"""build_cache.py --mat on a partial, resized copy of wiki_crop (the shared 64 px WIKI faces), and detection
of the faces in such small photos."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

import build_cache
from conftest import write_wiki_mat
from faces import FaceDetector


def wiki_rows(names: list[str], box=(10, 20, 110, 120)) -> list[dict]:
    return [dict(dob=723671, photo_taken=2009, gender=1.0, full_path=name, face_location=list(box), face_score=3.0)
            for name in names]


def test_absent_images_are_dropped_and_counted_and_a_mostly_absent_copy_is_refused(tmp_path, capsys):
    (tmp_path / "copy" / "01").mkdir(parents=True)
    for shade, name in enumerate("abc"):  # distinct images: identical copies would be dropped as duplicates
        cv2.imwrite(str(tmp_path / "copy" / "01" / f"{name}.jpg"), np.full((200, 200, 3), 100 + shade * 40, np.uint8))
    write_wiki_mat(tmp_path / "wiki.mat", wiki_rows([f"01/{name}.jpg" for name in "abcd"]))
    out = tmp_path / "cache.csv"
    argv = ["--mat", str(tmp_path / "wiki.mat"), "--images", "copy", "--root", str(tmp_path), "--out", str(out)]
    assert build_cache.main(argv) == 0
    assert pd.read_csv(out)["path"].tolist() == ["copy/01/a.jpg", "copy/01/b.jpg", "copy/01/c.jpg"]
    assert "1 rows: image absent from" in capsys.readouterr().out

    write_wiki_mat(tmp_path / "mostly_absent.mat", wiki_rows([f"01/{name}.jpg" for name in "axyz"]))
    argv = ["--mat", str(tmp_path / "mostly_absent.mat"), "--images", "copy", "--root", str(tmp_path),
            "--out", str(tmp_path / "partial.csv")]
    with pytest.raises(SystemExit) as stop:
        build_cache.run_cli(lambda: build_cache.main(argv), exit_code=2)
    assert stop.value.code == 2 and not (tmp_path / "partial.csv").exists()
    error = capsys.readouterr().err
    assert "only 1 of the 4 images" in error and "--partial" in error and len(error.splitlines()) == 1
    assert build_cache.main([*argv, "--partial"]) == 0
    assert pd.read_csv(tmp_path / "partial.csv")["path"].tolist() == ["copy/01/a.jpg"]


def test_boxes_outside_resized_images_are_refused_with_the_way_out(tmp_path, capsys):
    (tmp_path / "wiki_crop" / "01").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "wiki_crop" / "01" / "a.jpg"), np.full((64, 64, 3), 128, np.uint8))
    write_wiki_mat(tmp_path / "wiki.mat", wiki_rows(["01/a.jpg"], box=(100, 120, 300, 340)))
    argv = ["--mat", str(tmp_path / "wiki.mat"), "--root", str(tmp_path), "--out", str(tmp_path / "cache.csv")]
    with pytest.raises(SystemExit):
        build_cache.run_cli(lambda: build_cache.main(argv), exit_code=2)
    assert "--ignore-boxes" in capsys.readouterr().err and not (tmp_path / "cache.csv").exists()
    with pytest.raises(SystemExit):  # without detection the whole 64 px crop would be taken for the face
        build_cache.parse_args([*argv, "--ignore-boxes"])
    assert "--ignore-boxes needs --detect" in capsys.readouterr().err


@pytest.mark.parametrize("images, message", [("nonexistent", "is not a folder"), ("", "name a folder"),
                                             ("/", "name a folder"), ("../up", "name a folder")])
def test_an_images_folder_that_is_not_there_is_refused(tmp_path, capsys, images, message):
    write_wiki_mat(tmp_path / "wiki.mat", wiki_rows(["01/a.jpg"]))
    argv = ["--mat", str(tmp_path / "wiki.mat"), "--images", images, "--root", str(tmp_path),
            "--out", str(tmp_path / "cache.csv")]
    with pytest.raises(SystemExit):
        build_cache.run_cli(lambda: build_cache.main(argv), exit_code=2)
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1 and not (tmp_path / "cache.csv").exists()


def test_a_dotted_images_folder_gives_the_same_paths(tmp_path):
    (tmp_path / "copy" / "01").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "copy" / "01" / "a.jpg"), np.full((200, 200, 3), 90, np.uint8))
    write_wiki_mat(tmp_path / "wiki.mat", wiki_rows(["01/a.jpg"]))
    assert build_cache.main(["--mat", str(tmp_path / "wiki.mat"), "--images", "./copy/", "--root", str(tmp_path),
                             "--out", str(tmp_path / "cache.csv")]) == 0
    assert pd.read_csv(tmp_path / "cache.csv")["path"].tolist() == ["copy/01/a.jpg"]


def test_mat_only_options_need_mat(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_cache.parse_args(["--utkface", str(tmp_path), "--ignore-boxes"])
    assert "go with --mat" in capsys.readouterr().err


def test_small_photos_are_enlarged_for_detection(wiki_faces_root, yunet_path):
    """On the first 300 shared 64 px WIKI faces YuNet found 97.3% as they are, 99.7% enlarged to 128 px."""
    detector = FaceDetector("yunet", str(yunet_path))
    images = [cv2.imread(str(path)) for path in sorted(wiki_faces_root.rglob("*.jpg"))]
    found = [detector.detect(image) for image in images]
    assert np.mean([bool(faces) for faces in found]) >= 0.99
    for image, faces in zip(images, found):  # boxes in the photo's own pixels
        if faces:
            x, y, width, height = faces[0].box
            assert -8 <= x and x + width <= 72 and width >= 16


def test_real_wiki_mat_with_the_resized_copy(wiki_mat, wiki_faces_root, yunet_path, tmp_path, capsys):
    out = tmp_path / "wiki.csv"
    assert build_cache.main(["--mat", str(wiki_mat), "--images", "wiki_crop_64", "--root", str(wiki_faces_root),
                             "--out", str(out), "--detect", "--ignore-boxes", "--partial",
                             "--detector-model", str(yunet_path)]) == 0
    cache = build_cache.load_cache(out)
    assert len(cache) >= 297 and cache["path"].str.startswith("wiki_crop_64/").all()
    assert cache["right_eye_x"].notna().all() and (cache["face_x2"] <= 72).all()  # boxes of the 64 px images
    assert set(cache["source"]) == {"wiki"} and cache["gender"].isin([0, 1]).all()
    assert "rows: image absent from" in capsys.readouterr().out
