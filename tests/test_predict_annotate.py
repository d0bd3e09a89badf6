"""Annotated pictures: numbered labels inside the image, off other faces, strokes visible on small photos."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_predict_inputs import run_predict

from annotate import COLOURS, annotate, label_layout, rectangles_overlap


def face(index: int, box: list[int], gender: str = "female", age: float = 31.4) -> dict:
    return {"index": index, "box": box, "score": 0.9, "age": age, "age_range": [27.0, 36.0], "gender": gender,
            "gender_confidence": 0.9, "p_male": 0.1}


def check_layout(shape: tuple, faces: list[dict]) -> list[dict]:
    labels = label_layout(shape, faces)
    height, width = shape[:2]
    for number, label in enumerate(labels):
        x, y, w, h = label["rect"]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height, label  # inside the image
        assert label["text"].split()[0] == str(faces[number]["index"])  # numbered like the table and JSON
        for other, other_face in enumerate(faces):
            if other != number:
                assert not rectangles_overlap(label["rect"], other_face["box"]), (label, other_face)
                assert not rectangles_overlap(label["rect"], labels[other]["rect"])
    return labels


def test_top_row_faces_get_labels_below_not_over_their_foreheads():
    faces = [face(0, [40, 0, 120, 140]), face(1, [220, 4, 110, 130], "male"), face(2, [400, 10, 100, 120])]
    labels = check_layout((480, 640, 3), faces)
    for label, item in zip(labels, faces):
        assert label["rect"][1] >= item["box"][1] + item["box"][3]  # below the chin, not on the face
        assert "(27-36)" in label["text"]  # room for the age range


def test_crowded_faces_keep_labels_off_their_neighbours():
    faces = [face(0, [10, 60, 100, 100]), face(1, [112, 60, 100, 100], "male"), face(2, [10, 200, 100, 100]),
             face(3, [112, 200, 100, 100], "male"), face(4, [214, 60, 100, 100])]
    check_layout((330, 330, 3), faces)


def test_a_face_filling_a_small_image_still_gets_a_label_inside_it():
    faces = [face(0, [0, 0, 120, 120])]
    (label,) = check_layout((120, 120, 3), faces)
    assert label["rect"][0] >= 0 and label["rect"][2] <= 120


def test_small_photos_get_strokes_of_at_least_two_pixels():
    image = np.full((200, 300, 3), 128, np.uint8)
    item = face(0, [100, 80, 50, 60], "male")
    drawn = annotate(image, [item])
    x, y, w, h = item["box"]
    for column in (x, x + 1, x + w - 1, x + w - 2):  # both sides of the box, two pixels thick
        assert (drawn[y + h // 2, column] == COLOURS["male"]).all()
    assert (drawn[y + h // 2, x + 2] == 128).all() and (image == 128).all()  # inside untouched; input copied


def test_annotated_photo_of_real_faces(utkface_dir, yunet_path, tmp_path, capsys):
    """Real faces on the top edge and side by side: the written picture decodes, its labels sit where
    label_layout puts them, inside the image and off the other faces."""
    chips = sorted(utkface_dir.iterdir())[20:24]
    canvas = np.full((330, 700, 3), 170, np.uint8)
    for chip, (x, y, side) in zip(chips, [(0, 0, 150), (160, 0, 150), (330, 30, 170), (520, 130, 170)]):
        canvas[y:y + side, x:x + side] = cv2.resize(cv2.imread(str(chip)), (side, side), interpolation=cv2.INTER_AREA)
    photo, out = tmp_path / "group.png", tmp_path / "annotated.png"
    cv2.imwrite(str(photo), canvas)
    code, text, err = run_predict([str(photo), "--save", str(out), "--json"], capsys)
    assert code == 0, err
    faces = json.loads(text)[0]["faces"]
    assert len(faces) == 4
    annotated = cv2.imread(str(out))
    assert annotated is not None and annotated.shape == canvas.shape
    for item, label in zip(faces, check_layout(canvas.shape, faces)):
        x, y, w, h = label["rect"]
        region = annotated[y:y + h, x:x + w].reshape(-1, 3)
        share = (np.abs(region.astype(int) - COLOURS[item["gender"]]).sum(axis=1) < 30).mean()
        assert share > 0.4, (label, share)  # the label's background is drawn there, in the face's colour


@pytest.mark.parametrize("shape", [(60, 40, 3), (500, 30, 3)])
def test_labels_fit_narrow_images(shape):
    check_layout(shape, [face(0, [5, 10, 30, 30])])
