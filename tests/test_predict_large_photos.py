"""Phone-sized JPEGs are decoded at the detector's scale: the same faces, ages and genders as decoding every
pixel, with full resolution kept for the crops of faces too small for the reduced pixels."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

import predict
from faces import DETECTION_MAX_SIDE, Photo, open_photo

# x, y, side of each face on a 4000x3000 photo; the 150 px face is too small to crop from half the pixels
PLACEMENTS = [(150, 400, 900), (1300, 1600, 520), (2300, 300, 350), (3300, 2200, 150)]


@pytest.fixture(scope="module")
def phone_photos(utkface_dir, tmp_path_factory) -> list:
    """Three 12-megapixel JPEGs of real UTKFace faces on a textured background, as a phone takes them."""
    rng = np.random.default_rng(0)
    chips = sorted(utkface_dir.iterdir())
    folder = tmp_path_factory.mktemp("phone")
    paths = []
    for number in range(3):
        coarse = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        canvas = cv2.add(cv2.resize(coarse, (4000, 3000), interpolation=cv2.INTER_CUBIC),
                         rng.integers(0, 20, (3000, 4000, 3), dtype=np.uint8))  # sensor noise: real JPEG sizes
        for position, (x, y, side) in enumerate(PLACEMENTS):
            chip = cv2.imread(str(chips[40 * number + 7 * position]))
            canvas[y:y + side, x:x + side] = cv2.resize(chip, (side, side), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"{number}.jpg")
        cv2.imwrite(str(paths[-1]), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def by_position(faces: list[dict]) -> list[dict]:
    return sorted(faces, key=lambda face: (face["box"][0] // 100, face["box"][1] // 100))


def test_reduced_decoding_finds_the_same_faces_ages_and_genders(phone_photos, yunet_path, monkeypatch):
    predictor = predict.AgeGenderPredictor()
    full_decodes = []
    full_pixels = Photo.full_pixels
    monkeypatch.setattr(Photo, "full_pixels", lambda photo: full_decodes.append(photo.name) or full_pixels(photo))
    age_differences = []
    for path in phone_photos:
        photo = open_photo(path, DETECTION_MAX_SIDE)
        assert photo.reduction == 2 and photo.pixels.shape == (1500, 2000, 3) and photo.shape == (3000, 4000, 3)
        reduced = by_position(predictor._describe([predictor._frame_photo(photo)])[0])
        full = by_position(predictor.predict(cv2.imread(str(path))))  # every pixel decoded
        assert len(reduced) == len(full) == len(PLACEMENTS)
        for fast, reference, (_, _, side) in zip(reduced, full, PLACEMENTS):
            np.testing.assert_allclose(fast["box"], reference["box"], atol=0.03 * side)
            # the same gender, unless the model is undecided (two decodings differ like two JPEG encodings)
            assert fast["gender"] == reference["gender"] or abs(reference["p_male"] - 0.5) < 0.05, (fast, reference)
            age_differences.append(abs(fast["age"] - reference["age"]))
    # Typically within 0.5 years. (With the previous model, on 91 faces in 30 such photos, the mean was 0.2 and
    # one face moved 1.9 years, where re-encoding the photo invisibly, at JPEG quality 95, moves ages 0.15 on
    # average and 1.4 at most. The current model gives some faces a long tail of older ages, whose mean moves
    # more: here a 15-year-old's 350 px face, 5.4 years, while the other 11 faces move 0.5 at most.)
    assert np.median(age_differences) < 0.5 and np.mean(age_differences) < 1.0, age_differences
    assert full_decodes == [str(path) for path in phone_photos]  # only for each photo's small face


def test_a_rotated_phone_photo_keeps_upright_boxes(phone_photos, yunet_path):
    from PIL import Image

    upright = cv2.imread(str(phone_photos[0]))
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright)[:, :, ::-1]))  # stored turned left
    exif = sideways.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", quality=90, exif=exif)
    path = phone_photos[0].with_name("rotated.jpg")
    path.write_bytes(buffer.getvalue())
    photo = open_photo(path, DETECTION_MAX_SIDE)
    assert photo.reduction == 2 and photo.shape == upright.shape
    predictor = predict.AgeGenderPredictor()
    rotated_faces = by_position(predictor._describe([predictor._frame_photo(photo)])[0])
    upright_faces = by_position(predictor.predict(upright))
    assert len(rotated_faces) == len(upright_faces) == len(PLACEMENTS)
    for rotated, reference, (_, _, side) in zip(rotated_faces, upright_faces, PLACEMENTS):
        np.testing.assert_allclose(rotated["box"], reference["box"], atol=0.03 * side)


def test_small_photos_and_other_formats_are_decoded_whole(tmp_path):
    image = np.full((1000, 2000, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "small.jpg"), image)
    cv2.imwrite(str(tmp_path / "large.png"), np.full((3000, 4000, 3), 90, np.uint8))
    assert open_photo(tmp_path / "small.jpg", DETECTION_MAX_SIDE).reduction == 1  # 2000 / 2 < 1280
    assert open_photo(tmp_path / "large.png", DETECTION_MAX_SIDE).reduction == 1  # only JPEGs scale cheaply
