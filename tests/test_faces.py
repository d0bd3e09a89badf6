"""faces.py: photo reading, detection and the one framing function shared by training and prediction."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

import build_cache
from build_cache import LANDMARK_COLUMNS
from faces import (
    FACE_TEMPLATE,
    Face,
    FaceDetector,
    frame_face,
    load_photo,
    similarity_from_landmarks,
)
from generator import FaceDataset
from utils import UserError


def test_known_landmarks_map_to_the_template():
    size = 96
    angle, scale, shift = np.deg2rad(20), 2.7, np.array([40.0, -13.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = FACE_TEMPLATE * 100 @ rotation.T + shift  # the template, rotated, scaled and moved
    matrix = similarity_from_landmarks(landmarks, size)
    mapped = np.hstack([landmarks, np.ones((5, 1))]) @ matrix.T
    np.testing.assert_allclose(mapped, FACE_TEMPLATE * size, atol=1e-9)


def test_box_at_the_border_pads_by_mirroring():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :50] = 200  # left half bright
    crop = frame_face(image, Face((-30.0, -30.0, 60.0, 60.0), None, 1.0, "yunet"), 64)
    assert crop.shape == (64, 64, 3)
    assert (crop[:, 0] == 200).all()  # the part left of the image mirrors its bright left half
    assert (crop[0, :] == crop[40, :]).all()  # and the part above it the rows below the edge


def test_large_downscale_is_antialiased():
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes average to mid-grey when shrunk properly
    crop = frame_face(stripes, Face((0.0, 0.0, 2000.0, 2000.0), None, 1.0, "yunet"), 64)
    assert abs(float(crop.mean()) - 127.5) < 3 and crop.std() < 5


def test_training_and_prediction_frame_identically(tmp_path):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (5, 5), 0)
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    landmarks = np.array([[150, 120], [210, 118], [182, 160], [160, 195], [205, 193]], np.float64)
    row = dict(path="photo.png", age=30, gender=1, face_x1=120, face_y1=80, face_x2=240, face_y2=230, face_score=0.9,
               **dict(zip(LANDMARK_COLUMNS, landmarks.ravel())))
    dataset = FaceDataset(pd.DataFrame([row]), tmp_path, 96, augment=False)
    training_crop = dataset[0][0][0].astype(np.uint8)
    prediction_crop = frame_face(load_photo(tmp_path / "photo.png"), Face((120, 80, 120, 150), landmarks, 0.9), 96)
    np.testing.assert_array_equal(training_crop, prediction_crop)


def test_real_chips_frame_like_faces(utkface_dir, yunet_path, tmp_path):
    """Framed crops of real chips still contain a face the detector finds again, and match predict.py."""
    from predict import AgeGenderPredictor

    out = tmp_path / "utk.csv"
    build_cache.main(["--utkface", str(utkface_dir), "--out", str(out), "--detect"])
    table = build_cache.load_cache(out).iloc[:100]
    crops = FaceDataset(table, utkface_dir.parent, 96, batch_size=100, augment=False)[0][0].astype(np.uint8)
    detector = FaceDetector("yunet", str(yunet_path))
    found = sum(bool(detector.detect(cv2.resize(crop, (192, 192)))) for crop in crops)
    assert found >= 0.9 * len(crops)
    predictor = AgeGenderPredictor(detector="yunet")
    for position in range(5):
        photo = load_photo(utkface_dir.parent / table["path"].iloc[position])
        _, prediction_crops = predictor.frame(photo)
        np.testing.assert_array_equal(prediction_crops[0], crops[position])  # the very same pixels


@pytest.mark.parametrize("kind", ["yunet", "haar"])
def test_one_detector_serves_many_threads(utkface_dir, yunet_path, kind):
    """predict.py and serve.py find faces in several threads with one FaceDetector: each thread gets its
    own OpenCV detector, so concurrent calls give exactly the serial answers."""
    from concurrent.futures import ThreadPoolExecutor

    detector = FaceDetector(kind, str(yunet_path))
    photos = [cv2.copyMakeBorder(load_photo(path), 60, 60, 90, 90, cv2.BORDER_CONSTANT, value=(120, 120, 120))
              for path in sorted(utkface_dir.iterdir())[:24]]

    def boxes(photo):
        return [face.box for face in detector.detect(photo)]

    serial = [boxes(photo) for photo in photos]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(boxes, photos * 3)) == serial * 3
    assert sum(map(len, serial)) >= 12


def test_new_threads_need_no_detector_file(utkface_dir, yunet_path, tmp_path):
    """Each thread's YuNet is built from the bytes read at start-up: a server keeps working when the
    detector's file is replaced or cleaned away after it started."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    copy = tmp_path / "yunet.onnx"
    shutil.copy(yunet_path, copy)
    detector = FaceDetector("yunet", str(copy))
    copy.unlink()
    photo = cv2.copyMakeBorder(load_photo(sorted(utkface_dir.iterdir())[0]), 60, 60, 90, 90, cv2.BORDER_CONSTANT)
    with ThreadPoolExecutor(2) as pool:
        assert [len(faces) for faces in pool.map(detector.detect, [photo] * 2)] == [1, 1]


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"), (b"plain text, not pixels", "not an image"),
    ("truncated", "truncated JPEG"), ("huge", "too large"),
])
def test_bad_photos_are_refused_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    if content == "truncated":
        data = cv2.imencode(".jpg", np.full((200, 200, 3), 90, np.uint8))[1].tobytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "huge":
        path = tmp_path / "huge.png"
        path.write_bytes(png_header(100_000, 100_000))
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=reason):
        load_photo(path)


def png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_odd_formats_decode_to_bgr(tmp_path):
    grey = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([grey, grey, grey, np.full_like(grey, 128)]))
    cv2.imwrite(str(tmp_path / "deep.png"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "photo.webp"), np.dstack([grey] * 3))
    for name in ("grey.png", "rgba.png", "deep.png", "photo.webp"):
        image = load_photo(tmp_path / name)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8, name


def test_exif_orientation_is_honoured(tmp_path):
    from PIL import Image

    pixels = np.zeros((40, 80, 3), np.uint8)  # wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif)
    assert load_photo(tmp_path / "rotated.jpg").shape[:2] == (80, 40)


def test_jpeg_with_a_trailer_after_its_image_decodes(tmp_path):
    """A phone's motion photo: the video follows the JPEG, so the end marker is not in the last 4 kB."""
    pixels = np.full((120, 160, 3), 90, np.uint8)
    path = tmp_path / "motion.jpg"
    path.write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes() + b"\0\0\0\x18ftypmp42" + bytes(50_000))
    assert load_photo(path).shape == (120, 160, 3)


def test_pil_keeps_its_own_bomb_guard(tmp_path):
    import warnings

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(png_header(10_000, 9_500))  # 95 MP: over PIL's warning level, under our limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes to the caller
        with pytest.raises(UserError, match="could not be decoded"):  # a header without pixels
            load_photo(path)
    assert Image.MAX_IMAGE_PIXELS == limit and limit is not None  # the process-wide guard is untouched


def test_fifos_and_devices_are_refused_without_being_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.jpg")  # opening it would block until a writer came
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    for name in ("fifo.jpg", "zero.jpg"):
        with pytest.raises(UserError, match="not a regular file"):
            load_photo(tmp_path / name)
