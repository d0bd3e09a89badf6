"""predict.py with the model we ship: real faces, bad inputs, and agreement with the Keras model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT
from test_faces import png_header
from test_predict_inputs import run_predict

import predict
from build_cache import UTKFACE_NAME

SHIPPED = ROOT / "models" / "default" / "model.onnx"
FACE_KEYS = {"index", "box", "score", "age", "age_range", "gender", "gender_confidence", "p_male"}


def chip_label(path: Path) -> tuple[int, int]:
    match = UTKFACE_NAME.match(path.name)
    return int(match["age"]), 1 - int(match["gender"])  # (age, 1 = male)


@pytest.fixture(scope="module")
def composite(utkface_dir, tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    """Four real faces side by side on a plain background, at different sizes."""
    chips = sorted(utkface_dir.iterdir())[10:14]
    canvas = np.full((420, 1000, 3), 170, np.uint8)
    placements = [(30, 60, 200), (280, 110, 160), (500, 40, 240), (790, 150, 140)]
    for chip, (x, y, side) in zip(chips, placements):
        canvas[y:y + side, x:x + side] = cv2.resize(cv2.imread(str(chip)), (side, side), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("composite") / "group.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path, placements


def test_json_schema_and_every_face_of_a_composite(composite, yunet_path, capsys):
    path, placements = composite
    code, out, err = run_predict([str(path), "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)  # stdout holds the JSON document and nothing else
    assert len(document) == 1 and set(document[0]) == {"image", "faces"} and document[0]["image"] == str(path)
    faces = document[0]["faces"]
    assert len(faces) == len(placements)
    assert [face["index"] for face in faces] == list(range(len(faces)))
    areas = [face["box"][2] * face["box"][3] for face in faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    for face in faces:
        assert set(face) == FACE_KEYS
        assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
        x, y, w, h = face["box"]
        assert x >= 0 and y >= 0 and x + w <= 1000 and y + h <= 420  # clipped to the image
        assert 0.6 <= face["score"] <= 1 and round(face["score"], 3) == face["score"]
        assert abs(face["p_male"] - (1 - face["gender_confidence"] if face["gender"] == "female"
                                     else face["gender_confidence"])) < 1e-3
        assert 0 <= face["age_range"][0] <= face["age"] <= face["age_range"][1] <= 100
        assert face["gender"] in ("male", "female") and 0.5 <= face["gender_confidence"] <= 1
    for x, y, side in placements:  # each chip holds exactly one detected face centre
        centres = [(f["box"][0] + f["box"][2] / 2, f["box"][1] + f["box"][3] / 2) for f in faces]
        assert sum(x <= cx <= x + side and y <= cy <= y + side for cx, cy in centres) == 1
        face = next(f for f, (cx, cy) in zip(faces, centres) if x <= cx <= x + side and y <= cy <= y + side)
        assert 0.5 * side <= face["box"][2] <= 1.1 * side


def test_save_writes_an_annotated_image(composite, yunet_path, tmp_path, capsys):
    path, _ = composite
    out = tmp_path / "annotated.jpg"
    code, table, _ = run_predict([str(path), "--save", str(out)], capsys)
    assert code == 0 and "male" in table
    annotated, original = cv2.imread(str(out)), cv2.imread(str(path))
    assert annotated is not None and annotated.shape == original.shape
    assert np.abs(annotated.astype(int) - original).sum() > 0  # boxes and labels were drawn


@pytest.fixture(scope="module")
def held_out_chips(tmp_path_factory) -> list[Path]:
    """Every 4th UTKFace photo of the shipped model's test split (about 500): faces it never trained on."""
    import tarfile

    import pandas as pd
    from conftest import SHARED

    archive = SHARED / "data" / "UTKFace.tar.gz"
    if not archive.is_file():
        pytest.skip("../shared/data/UTKFace.tar.gz is absent")
    split = pd.read_csv(SHIPPED.with_name("split.csv"), keep_default_na=False)
    wanted = set(sorted(split.loc[(split["split"] == "test") & (split["source"] == "utkface"), "path"])[::4])
    out = tmp_path_factory.mktemp("held_out")
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.name in wanted:
                tar.extract(member, out, filter="data")
    return sorted((out / "UTKFace").iterdir())


def test_held_out_faces_score_near_the_published_figures(held_out_chips, yunet_path, capsys):
    """predict.py with YuNet on test-split faces: the model card says age MAE 4.7 and gender 93.5% there."""
    code, out, err = run_predict([str(held_out_chips[0].parent), "--json"], capsys)
    assert code == 0, err
    by_path = {item["image"]: item["faces"] for item in json.loads(out)}
    errors, correct = [], []
    for chip in held_out_chips:
        face = by_path[str(chip)][0]
        age, male = chip_label(chip)
        errors.append(abs(face["age"] - age))
        correct.append((face["gender"] == "male") == bool(male))
    assert len(held_out_chips) > 400
    assert np.mean(errors) < 5.3 and np.mean(correct) > 0.91, (np.mean(errors), np.mean(correct))


def test_bad_inputs_are_reported_per_image(tmp_path, capsys):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((120, 120, 3), 128, np.uint8))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    data = cv2.imencode(".jpg", np.full((300, 300, 3), 80, np.uint8))[1].tobytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "huge.png").write_bytes(png_header(100_000, 100_000))
    (tmp_path / "no_images").mkdir()
    names = ["good.png", "empty.jpg", "text.jpg", "truncated.jpg", "huge.png", "no_images", "missing.jpg"]
    code, out, err = run_predict([str(tmp_path / n) for n in names] + ["--json", "--detector", "haar"], capsys)
    assert code == 1
    document = {Path(item["image"]).name: item for item in json.loads(out)}
    assert document["good.png"] == {"image": str(good), "faces": []}  # processed despite the others
    reasons = {name: document[name].get("error", "") for name in names[1:]}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"] and "too large" in reasons["huge.png"]
    assert "no images" in reasons["no_images"] and "no such file" in reasons["missing.jpg"]
    assert "Traceback" not in err and len(err.strip().splitlines()) == len(names) - 1


def test_bad_model_file_is_one_line(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not a model")
    (tmp_path / "model.json").write_text(SHIPPED.with_name("model.json").read_text())
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((50, 50, 3), np.uint8))
    code, _, err = run_predict([str(photo), "--model", str(model), "--detector", "none"], capsys)
    assert code == 1 and err.startswith("error: cannot load model") and err.count("\n") == 1


def test_importable_array_in_faces_out(utkface_dir):
    chip = sorted(utkface_dir.iterdir())[0]
    faces = predict.AgeGenderPredictor(detector="none").predict(cv2.imread(str(chip)))
    assert len(faces) == 1 and set(faces[0]) == FACE_KEYS


def test_haar_fallback_when_yunet_cannot_be_had(monkeypatch, capsys):
    monkeypatch.delenv("AGE_GENDER_YUNET", raising=False)
    predictor = predict.AgeGenderPredictor(detector="auto")  # the download is pointed at a closed port
    assert predictor.detector.kind == "haar"
    assert "warning: YuNet face detector unavailable" in capsys.readouterr().err


def test_prediction_does_not_import_tensorflow(tmp_path):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    code = ("import sys, predict; predict.main([sys.argv[1], '--detector', 'none', '--json']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code, str(photo)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_onnx_agrees_with_keras(utkface_dir):
    keras_path = SHIPPED.with_suffix(".keras")
    if not keras_path.is_file():
        pytest.skip("the shipped model has no .keras copy")
    import keras

    import backbone  # noqa: F401  registers the custom loss and metric

    predictor = predict.AgeGenderPredictor(SHIPPED, detector="none")  # the float model; int8 has its own test
    crops = np.concatenate([predictor.frame(cv2.imread(str(p)))[1] for p in sorted(utkface_dir.iterdir())[:32]])
    expected = keras.models.load_model(keras_path).predict(crops.astype(np.float32), verbose=0)
    got = dict(zip(predictor.output_names, predictor.session.run(None, {predictor.input_name: crops.astype(np.float32)})))
    for name in ("age", "gender"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4)


def test_a_box_framed_model_is_served_box_crops_from_its_own_card(composite, yunet_path, tmp_path):
    """The ONNX file's embedded card decides the framing: a box-framed model never gets landmark crops."""
    import shutil

    from faces import frame_face, make_framing
    from model_card import embed_in_onnx, read_card

    model_path = tmp_path / "box" / "model.onnx"
    model_path.parent.mkdir()
    shutil.copy(SHIPPED, model_path)
    card = read_card(SHIPPED)
    card["framing"] = make_framing("box", context=1.2)
    embed_in_onnx(model_path, card)
    predictor = predict.AgeGenderPredictor(model_path)
    image = cv2.imread(str(composite[0]))
    faces, crops = predictor.frame(image)
    assert len(faces) == 4 and all(face.landmarks is not None for face in faces)  # YuNet found them ...
    for face, crop in zip(faces, crops):  # ... but the crops are the box framing the card names
        face.landmarks = None
        np.testing.assert_array_equal(crop, frame_face(image, face, predictor.size, make_framing("box", 1.2)))
    assert len(predictor.predict(image)) == 4


def test_huge_photo_is_detected_downscaled_with_boxes_in_its_own_pixels(composite, yunet_path):
    path, placements = composite
    small = cv2.imread(str(path))
    huge = cv2.resize(small, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 4000 x 1680 pixels
    predictor = predict.AgeGenderPredictor()
    small_faces = sorted(predictor.predict(small), key=lambda f: f["box"][0])
    huge_faces = sorted(predictor.predict(huge), key=lambda f: f["box"][0])
    assert len(huge_faces) == len(small_faces) == len(placements)
    for small_face, huge_face in zip(small_faces, huge_faces):
        # the same face in the huge photo's own pixels, up to detector jitter (10% of the face)
        np.testing.assert_allclose(np.array(huge_face["box"]) / 4, small_face["box"], atol=0.1 * small_face["box"][2])
        assert huge_face["gender"] == small_face["gender"]
    # Ages move with the resampling; one face can move several years (on 119 UTKFace faces, 160 px and 4x
    # that: 1.2 years on average, 2.9 at the 90th percentile), the faces together little.
    assert np.mean([abs(huge["age"] - small["age"]) for small, huge in zip(small_faces, huge_faces)]) < 3.5
