"""Calibrated confidence on the predict side: confidence.py's temperatures and reliability figures, the
card's calibration entry (optional, refused when broken), and predict.py, serve.py and video applying
it and withholding an unsure gender (--min-gender-confidence)."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from conftest import ROOT

import annotate
import predict
from confidence import (age_range, calibrated, gender_ece, range_coverage, reliability_bins, scale_age,
                        scale_gender)
from model_card import embed_in_onnx, read_card, validate_card
from utils import UserError, run_cli

SHIPPED = ROOT / "models" / "default"
BINS = np.arange(101)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values))


def gaussian_ages(centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Age distributions over 0..100 years (one row per centre), discretised Gaussians."""
    log_probs = -0.5 * ((BINS[None] - centres[:, None]) / widths[:, None]) ** 2
    probs = np.exp(log_probs - log_probs.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def draw(distributions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One age (whole years) drawn from each distribution."""
    return (np.cumsum(distributions, axis=1) < rng.random((len(distributions), 1))).sum(axis=1).astype(np.float64)


# --- confidence.py ------------------------------------------------------------------------------

def test_temperatures_keep_the_answer_and_1_changes_nothing():
    rng = np.random.default_rng(0)
    age_probs = gaussian_ages(rng.uniform(5, 90, 50), rng.uniform(2, 10, 50))
    p_male = sigmoid(rng.normal(0, 3, 50))
    np.testing.assert_allclose(scale_age(age_probs, 1.0), age_probs, atol=1e-12)
    np.testing.assert_allclose(scale_gender(p_male, 1.0), p_male, atol=1e-12)
    for temperature in (0.3, 2.5):
        assert (scale_age(age_probs, temperature).argmax(axis=1) == age_probs.argmax(axis=1)).all()
        assert ((scale_gender(p_male, temperature) >= 0.5) == (p_male >= 0.5)).all()
    np.testing.assert_allclose(scale_gender(np.array([0.0, 0.5, 1.0]), 3.0), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(scale_gender(np.array([sigmoid(2.0)]), 2.0), [sigmoid(1.0)])
    with_zeros = np.zeros((1, 101))
    with_zeros[0, [20, 21]] = 0.2, 0.8
    np.testing.assert_allclose(scale_age(with_zeros, 0.5)[0, [20, 21]], [1 / 17, 16 / 17])  # 0.2^2 : 0.8^2
    assert calibrated(age_probs, p_male, None) == (age_probs, p_male)  # no calibration: the very same arrays


def test_age_range_is_predicts_central_68_percent():
    """The same bins as the rule predict.py has always used: first bin where the cumulative reaches 0.16 / 0.84."""
    rng = np.random.default_rng(1)
    age_probs = rng.dirichlet(np.full(101, 0.3), 200).astype(np.float32)
    low, high = age_range(age_probs)
    for probs, got_low, got_high in zip(age_probs, low, high):
        cumulative = np.cumsum(probs)
        assert (got_low, got_high) == (np.argmax(cumulative >= 0.16), np.argmax(cumulative >= 0.84))
    step = np.zeros((1, 101))
    step[0, 30:40] = 0.1  # ten equal bins: 2.5% in the 30th bin, 97.5% reached in the 39th
    assert [int(bound[0]) for bound in age_range(step, 0.95)] == [30, 39]
    assert range_coverage(np.array([30, 30]), np.array([39, 39]), np.array([39.0, 40.0])) == 0.5


def test_reliability_bins_and_ece_by_hand():
    # confidences 0.55 0.55 | 0.65 | 0.92 | 1.0 ; right: yes no | yes | no | yes
    p_male = np.array([0.55, 0.45, 0.35, 0.92, 1.0])
    is_male = np.array([True, True, False, False, True])
    bins = reliability_bins(p_male, is_male)
    assert [entry["n"] for entry in bins] == [2, 1, 0, 0, 1, 1]
    assert bins[0]["accuracy"] == 0.5 and bins[0]["confidence"] == pytest.approx(0.55)
    assert np.isnan(bins[2]["accuracy"]) and bins[5]["confidence"] == 1.0  # 1.0 falls in the last bin
    expected = (2 * abs(0.5 - 0.55) + abs(1 - 0.65) + abs(0 - 0.92) + abs(1 - 1.0)) / 5
    assert gender_ece(p_male, is_male) == pytest.approx(expected)
    assert np.isnan(gender_ece(np.array([]), np.array([], bool)))


# --- the card -----------------------------------------------------------------------------------

GOOD = {"age_temperature": 0.8, "gender_temperature": 1.3}


@pytest.mark.parametrize("calibration", [
    "0.8", [0.8, 1.3], {"age_temperature": 0.8}, {**GOOD, "gender_temperature": float("nan")},
    {**GOOD, "age_temperature": float("inf")}, {**GOOD, "age_temperature": 0}, {**GOOD, "gender_temperature": -1.0},
    {**GOOD, "age_temperature": "0.8"}, {**GOOD, "gender_temperature": True}, {**GOOD, "age_temperature": None},
    {**GOOD, "gender_temperature": 1e6},
])
def test_broken_calibration_is_refused_with_one_line(calibration, tmp_path, capsys):
    card = read_card(SHIPPED / "model.onnx")
    card["calibration"] = calibration
    with pytest.raises(UserError, match="calibration"):
        validate_card(card)
    model_path = tmp_path / "model.onnx"
    shutil.copy(SHIPPED / "model.onnx", model_path)
    model = onnx.load(str(model_path))  # written around embed_in_onnx, which refuses invalid cards
    for entry in model.metadata_props:
        if entry.key == "age_gender_card":
            entry.value = json.dumps(card)  # json writes NaN and Infinity as the broken card would hold them
    onnx.save(model, str(model_path))
    from test_predict_inputs import colourful

    cv2.imwrite(str(tmp_path / "face.png"), colourful())
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: predict.main([str(tmp_path / "face.png"), "--detector", "none", "--model", str(model_path)]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {model_path}: invalid model card (calibration") and "calibrate.py" in lines[0]


def calibrated_copy(tmp_path, calibration: dict):
    """The shipped float model with a calibration in its card."""
    model_path = tmp_path / "model.onnx"
    shutil.copy(SHIPPED / "model.onnx", model_path)
    embed_in_onnx(model_path, {**read_card(model_path), "calibration": calibration})
    return model_path


def test_predict_applies_the_cards_calibration_and_a_card_without_one_predicts_as_trained(tmp_path):
    from test_predict_inputs import colourful

    faces = np.stack([colourful(seed=seed) for seed in range(6)])
    uncalibrated_path = tmp_path / "uncalibrated" / "model.onnx"
    uncalibrated_path.parent.mkdir()
    shutil.copy(SHIPPED / "model.onnx", uncalibrated_path)
    card = read_card(uncalibrated_path)
    card.pop("calibration", None)  # a card from before calibrate.py
    embed_in_onnx(uncalibrated_path, card)
    plain = predict.AgeGenderPredictor(uncalibrated_path, detector="none")
    assert "calibration" not in plain.card and plain.calibration is None
    outputs = predict.mirror_average(plain.run_model, faces)
    raw_age, raw_male = outputs["age"], outputs["gender"][:, 0]
    assert [face["p_male"] for face in plain.predict_faces(faces)] == [round(float(p), 4) for p in raw_male]

    model_path = calibrated_copy(tmp_path, {"age_temperature": 2.0, "gender_temperature": 0.25})
    sure = predict.AgeGenderPredictor(model_path, detector="none")
    answers = sure.predict_faces(faces)
    expected_age_probs = scale_age(raw_age, 2.0)
    for face, raw_p, p, age_probs in zip(answers, raw_male, scale_gender(raw_male, 0.25), expected_age_probs):
        assert face["p_male"] == pytest.approx(p, abs=1e-4) and face["gender"] == ("male" if raw_p >= 0.5 else "female")
        assert face["age"] == pytest.approx(age_probs @ BINS, abs=0.051)
        assert face["age_range"] == [float(bound) for bound in age_range(age_probs)]
    unsure = predict.AgeGenderPredictor(model_path, detector="none", use_calibration=False)
    assert unsure.predict_faces(faces) == plain.predict_faces(faces)




# --- --min-gender-confidence --------------------------------------------------------------------

def test_an_unsure_gender_is_unknown_in_every_output_format(tmp_path, capsys):
    import csv
    import io

    from test_predict_inputs import colourful, run_predict

    path = tmp_path / "face.png"
    cv2.imwrite(str(path), colourful(seed=4))
    face = predict.AgeGenderPredictor(detector="none").predict(str(path))[0]
    confidence = face["gender_confidence"]
    base = [str(path), "--detector", "none"]
    for threshold, gender in ((confidence, face["gender"]), (confidence + 0.001, "unknown"), (0.0, face["gender"])):
        argv = base + ["--min-gender-confidence", str(threshold)]
        _, out, err = run_predict(argv + ["--json"], capsys)
        answered = json.loads(out)[0]["faces"][0]
        assert answered == {**face, "gender": gender}, err  # the confidence and p_male stay
        _, out, _ = run_predict(argv + ["--format", "jsonl"], capsys)
        assert json.loads(out)["faces"][0]["gender"] == gender
        _, out, _ = run_predict(argv + ["--format", "csv"], capsys)
        assert next(csv.DictReader(io.StringIO(out)))["gender"] == gender
        _, out, _ = run_predict(argv, capsys)
        assert out.splitlines()[1].split()[-2:] == [gender, f"{confidence:.2f}"]
    code, out, err = run_predict(base + ["--min-gender-confidence", "1", "--save", str(tmp_path / "out.png")], capsys)
    assert code == 0, err
    annotated = cv2.imread(str(tmp_path / "out.png"))
    assert tuple(annotated[1, 1]) == annotate.COLOURS["unknown"]  # the box's stroke, grey
    assert annotate.label_layout(annotated.shape, [{**face, "gender": "unknown"}])[0]["text"].startswith("0 ? ")
    for bad in ("1.5", "-0.1", "nan", "half"):
        code, _, err = run_predict(base + ["--min-gender-confidence", bad], capsys)
        assert code == 2 and "--min-gender-confidence" in err


def test_video_applies_the_calibration_and_withholds_an_unsure_gender(tmp_path):
    import video
    from faces import Face

    model_path = calibrated_copy(tmp_path, {"age_temperature": 1.0, "gender_temperature": 4.0})
    predictor = predict.AgeGenderPredictor(model_path, detector="none", min_gender_confidence=0.7)
    tracker = video.FaceTracker()
    flat = np.full((1, 101), 1 / 101)
    tracks = tracker.update([Face((10.0, 10.0, 100.0, 100.0), None, 0.9)], flat, np.array([0.9]), 0)
    entry = video.face_entries(predictor, tracks, 640, 480)[0]
    assert entry["p_male"] == pytest.approx(float(scale_gender(np.array([0.9]), 4.0)[0]), abs=1e-4)  # 0.63
    assert entry["gender"] == "unknown" and entry["gender_confidence"] < 0.7
    assert tracks[0].summary(10.0, predictor)["gender"] == "unknown"
    predictor.min_gender_confidence = 0.0
    assert video.face_entries(predictor, tracks, 640, 480)[0]["gender"] == "male"


def test_serve_takes_min_gender_confidence_per_request():
    import serve
    from test_predict_inputs import colourful

    predictor = predict.AgeGenderPredictor(detector="none")
    client = serve.create_app(predictor).test_client()
    image = cv2.imencode(".png", colourful(seed=4))[1].tobytes()
    face = predictor.predict(colourful(seed=4))[0]

    def post(**params):
        import io

        return client.post("/predict", query_string=params, data={"image": (io.BytesIO(image), "face.png")})

    assert post().get_json()["faces"] == [face]
    assert post(min_gender_confidence=face["gender_confidence"]).get_json()["faces"] == [face]
    unsure = post(min_gender_confidence=face["gender_confidence"] + 0.001, annotate=1).get_json()
    assert unsure["faces"] == [{**face, "gender": "unknown"}] and unsure["annotated_jpeg"]
    for bad in ("2", "x", "nan"):
        response = post(min_gender_confidence=bad)
        assert response.status_code == 400 and "min_gender_confidence" in response.get_json()["error"]
    assert predictor.min_gender_confidence == 0.0  # a request never changes the shared predictor
