"""The model card is the contract between training and prediction: versioned, validated, inside the model."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

import predict
import train
from build_cache import BOX_COLUMNS, LANDMARK_COLUMNS, add_landmarks, write_cache
from faces import FaceDetector
from build_cache import frame_row
from model_card import FORMAT_VERSION, embed_in_onnx, read_card, validate_card
from utils import UserError

SHIPPED = ROOT / "models" / "default" / "model.onnx"


def test_the_shipped_model_carries_a_valid_card():
    card = read_card(SHIPPED)
    assert card["format_version"] == FORMAT_VERSION and card == json.loads(SHIPPED.with_name("model.json").read_text())


def test_the_shipped_int8_model_is_the_shipped_float_model_quantized():
    """predict.py's default is model.int8.onnx: the same card, and the float model it came from is the one beside it."""
    from utils import file_sha256

    card = read_card(SHIPPED.with_name("model.int8.onnx"))
    quantization = card.pop("quantization")
    assert card == read_card(SHIPPED) and quantization["float_model_sha256"] == file_sha256(SHIPPED)
    assert predict.DEFAULT_MODEL == SHIPPED.with_name("model.int8.onnx")


@pytest.mark.parametrize("change, message", [
    (lambda card: card.pop("format_version"), "no format_version"),
    (lambda card: card.update(format_version=99), "format_version 99"),
    (lambda card: card["input"].update(size="96"), "input.size"),
    (lambda card: card["input"].update(size=97), "input.size"),
    (lambda card: card["framing"].update(method="similarity"), "framing.method"),
    (lambda card: card["framing"].update(template=[[0.3, 0.3]] * 4), "framing.template"),
    (lambda card: card["framing"]["box_framing"].pop("haar"), "box_framing"),
    (lambda card: card["detector"].update(score_threshold=1.5), "score_threshold"),
])
def test_a_card_with_wrong_fields_or_types_is_one_clear_error(tmp_path, change, message):
    card = read_card(SHIPPED)
    change(card)
    with pytest.raises(UserError, match=message):
        validate_card(card, "model.json")
    model_path = tmp_path / "model.onnx"
    shutil.copy(SHIPPED, model_path)
    import onnx

    model = onnx.load(str(model_path))  # written around embed_in_onnx, which refuses invalid cards
    model.metadata_props.add(key="age_gender_card", value=json.dumps(card))
    onnx.save(model, str(model_path))
    with pytest.raises(UserError, match=message):
        predict.AgeGenderPredictor(model_path, detector="none")


def test_models_without_a_card_or_with_broken_json_are_refused(tmp_path):
    import onnx

    bare = onnx.load(str(SHIPPED))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(UserError, match="carries no model card"):
        predict.AgeGenderPredictor(tmp_path / "bare.onnx", detector="none")
    bare.metadata_props.add(key="age_gender_card", value="{not json")
    onnx.save(bare, str(tmp_path / "broken.onnx"))
    with pytest.raises(UserError, match="not valid JSON"):
        read_card(tmp_path / "broken.onnx")
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(UserError, match="no model card"):
        read_card(tmp_path / "model.keras")


def test_embedding_replaces_the_earlier_card(tmp_path):
    model_path = tmp_path / "model.onnx"
    shutil.copy(SHIPPED, model_path)
    card = read_card(SHIPPED)
    card["name"] = "renamed"
    embed_in_onnx(model_path, card)
    import onnx

    keys = [entry.key for entry in onnx.load(str(model_path)).metadata_props]
    assert keys.count("age_gender_card") == 1 and read_card(model_path)["name"] == "renamed"


@pytest.fixture(scope="module")
def photo_rows(utkface_dir, yunet_path, tmp_path_factory):
    """Six photos (a real face on a plain background) with YuNet's box and landmarks in a cache row each."""
    root = tmp_path_factory.mktemp("photos")
    chips = sorted(utkface_dir.iterdir())[:6]
    for index, chip in enumerate(chips):
        canvas = np.full((240, 320, 3), 120, np.uint8)
        canvas[30:190, 90:250] = cv2.resize(cv2.imread(str(chip)), (160, 160), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / f"{index}.png"), canvas)
    table = pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "age": [20.0, 30, 40, 50, 60, 70],
                          "gender": [0.0, 1, 0, 1, 0, 1], **{c: np.nan for c in [*BOX_COLUMNS, "face_score"]}})
    return root, pd.DataFrame(add_landmarks(table, root, FaceDetector("yunet", str(yunet_path))))


@pytest.mark.parametrize("kind", ["landmarks", "box"])
def test_train_export_and_predict_give_the_model_the_same_pixels(photo_rows, tmp_path, kind):
    """A cache with landmarks makes a landmark-framed model; one with face boxes only (as IMDB-WIKI's
    metadata) a box-framed one. Either way predict.py, reading the card inside model.onnx, frames a
    photo exactly as training framed it."""
    root, table = photo_rows
    if kind == "box":
        table = table.assign(**{c: np.nan for c in LANDMARK_COLUMNS}, box_source="yunet")
    write_cache(table, root / f"{kind}.csv")
    out = tmp_path / "run"
    assert train.main(["--cache", str(root / f"{kind}.csv"), "--root", str(root), "--out", str(out), "--epochs", "1",
                       "--image-size", "32", "--width", "8", "--batch-size", "4", "--context", "1.2"]) == 0
    predictor = predict.AgeGenderPredictor(out / "model.onnx")
    assert predictor.framing["method"] == kind and predictor.framing["context"] == 1.2
    for record in table.to_dict("records"):
        image = cv2.imread(str(root / record["path"]))
        faces, crops = predictor.frame(image)
        assert len(faces) == 1
        np.testing.assert_array_equal(crops[0], frame_row(record, root, 32, read_card(out / "model.onnx")["framing"]))


def test_a_model_with_non_finite_weights_is_never_exported(tmp_path):
    import keras

    from backbone import build_model
    from export import export_onnx
    from model_card import write_card

    model = build_model(32, 8)
    kernel = model.weights[0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    model.save(tmp_path / "model.keras")
    card = read_card(SHIPPED)
    card["input"]["size"] = 32
    write_card(tmp_path, card)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("ONNX export runs on the TensorFlow backend")
    with pytest.raises(UserError, match="NaN or infinite weights"):
        export_onnx(tmp_path / "model.keras")
    assert not (tmp_path / "model.onnx").exists()
