"""calibrate.py: its fit on synthetic outputs whose true temperatures are known, and its run on the
shipped model (the card written into every file of the model, nothing else in them touched)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import ROOT
from test_confidence import draw, gaussian_ages, sigmoid

import build_cache
import calibrate
import predict
from confidence import age_range, expected_age, gender_ece, range_coverage, scale_age, scale_gender
from model_card import read_card
from utils import UserError, file_sha256, run_cli

SHIPPED = ROOT / "models" / "default"


# --- calibrate.py's fit -------------------------------------------------------------------------

def synthetic_faces(temperature_gender: float, temperature_age: float, count: int = 6000, seed: int = 0):
    """Faces of two sources whose true labels follow known distributions, and the outputs of a model that
    is off by the given temperatures (its logits are the true ones divided by them)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2.5, count)
    is_male = rng.random(count) < sigmoid(true_logits)
    true_ages = gaussian_ages(rng.uniform(10, 80, count), rng.uniform(4, 9, count))
    faces = pd.DataFrame({"age": draw(true_ages, rng), "gender": is_male.astype(np.float64),
                          "source": np.where(np.arange(count) % 3, "big", "small")})
    return faces, scale_age(true_ages, 1 / temperature_age), sigmoid(true_logits * temperature_gender)


@pytest.mark.parametrize("temperature_gender, temperature_age", [(2.0, 1.6), (0.5, 0.7)])
def test_fitting_recovers_a_known_temperature(temperature_gender, temperature_age):
    faces, age_probs, male_probs = synthetic_faces(temperature_gender, temperature_age)
    fitted = calibrate.fit(faces, age_probs, male_probs)
    assert fitted["gender_temperature"] == pytest.approx(temperature_gender, rel=0.08)
    # the ranges' inclusive whole-year ends hold a little more than their mass: a little sharper than the truth
    assert fitted["age_temperature"] == pytest.approx(temperature_age, rel=0.15)
    scaled = scale_age(age_probs, fitted["age_temperature"])
    true_age = faces["age"].to_numpy()
    assert range_coverage(*age_range(scaled), true_age) == pytest.approx(0.68, abs=0.03)
    assert range_coverage(*age_range(scaled, 0.95), true_age) == pytest.approx(0.95, abs=0.03)
    p_male = scale_gender(male_probs, fitted["gender_temperature"])
    assert gender_ece(p_male, faces["gender"] == 1) < 0.02 < gender_ece(male_probs, faces["gender"] == 1)


def test_every_source_weighs_the_same():
    weights = calibrate.source_weights(np.array(["a", "a", "a", "b"]))
    np.testing.assert_allclose(weights, [1 / 6, 1 / 6, 1 / 6, 1 / 2])


def test_the_age_temperature_is_held_back_where_it_would_raise_the_mae():
    """Too sure of a peak, with a far second bump: flattening (what the ranges want) pulls the mean
    towards the bump, so the fit stops where the MAE has grown by MAX_MAE_INCREASE."""
    rng = np.random.default_rng(3)
    count = 3000
    centres = rng.uniform(15, 50, count)
    faces = pd.DataFrame({"age": np.clip(np.round(centres + rng.normal(0, 6, count)), 0, 100), "gender": np.nan,
                          "source": "one"})
    age_probs = 0.97 * gaussian_ages(centres, np.full(count, 1.5)) + 0.03 * gaussian_ages(centres + 40,
                                                                                           np.full(count, 1.5))
    faces.loc[:calibrate.MIN_FACES, "gender"] = 1.0
    fitted = calibrate.fit(faces, age_probs, np.full(count, 0.9))
    assert 1 < fitted["age_temperature"] < fitted["age_temperature_best_fit"]
    true_age = faces["age"].to_numpy()

    def mae(temperature: float) -> float:
        return float(np.abs(expected_age(scale_age(age_probs, temperature)) - true_age).mean())

    assert mae(fitted["age_temperature"]) <= mae(1.0) + calibrate.MAX_MAE_INCREASE
    assert mae(fitted["age_temperature_best_fit"]) > mae(1.0) + calibrate.MAX_MAE_INCREASE


def test_too_few_labelled_faces_is_one_clear_error():
    faces, age_probs, male_probs = synthetic_faces(1.0, 1.0, count=150)
    faces.loc[::2, "age"] = np.nan
    with pytest.raises(UserError, match="75 with an age; calibrate.py needs 100"):
        calibrate.fit(faces, age_probs, male_probs)


# --- calibrate.py end to end --------------------------------------------------------------------

@pytest.fixture
def model_folder(utkface_dir, tmp_path) -> dict:
    """Copies of the shipped float and int8 models and model.json; split.csv puts every face in val."""
    cache = tmp_path / "utk.csv"
    assert build_cache.main(["--utkface", str(utkface_dir), "--out", str(cache)]) == 0
    table = build_cache.load_cache(cache)
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "model.json"):
        shutil.copy(SHIPPED / name, folder / name)
    pd.DataFrame({"source": "utkface", "path": table["path"], "split": "val"}).to_csv(folder / "split.csv",
                                                                                      index=False)
    return {"folder": folder, "argv": ["--cache", str(cache), "--root", str(utkface_dir.parent)]}


def run_calibrate(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: calibrate.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_calibrate_writes_the_card_into_every_file_of_the_model_and_nothing_else(model_folder, capsys):
    folder = model_folder["folder"]
    before = {name: onnx.load(str(folder / name)) for name in ("model.onnx", "model.int8.onnx")}
    code, out, err = run_calibrate(["--model", str(folder / "model.int8.onnx"), *model_folder["argv"]], capsys)
    assert code == 0, err
    assert "utkface" in out and "gender temperature" in out and out.count("wrote the calibration into") == 3
    cards = {name: read_card(folder / name) for name in ("model.onnx", "model.int8.onnx")}
    calibration = cards["model.int8.onnx"]["calibration"]
    assert cards["model.onnx"]["calibration"] == calibration
    assert json.loads((folder / "model.json").read_text()) == cards["model.onnx"]
    assert calibration["fitted_on"]["model"] == "model.int8.onnx" and calibration["fitted_on"]["split"] == "val"
    figures = calibration["figures"]["utkface"]
    assert figures["after"]["gender_accuracy"] == figures["before"]["gender_accuracy"]  # the same genders
    assert figures["after"]["age_mae"] <= figures["before"]["age_mae"] + calibrate.MAX_MAE_INCREASE
    assert figures["after"]["gender_ece"] <= figures["before"]["gender_ece"]
    # the int8 card still names the float file beside it; apart from the cards, nothing changed
    assert cards["model.int8.onnx"]["quantization"]["float_model_sha256"] == file_sha256(folder / "model.onnx")
    for name, old in before.items():
        new = onnx.load(str(folder / name))
        assert new.graph == old.graph and new.opset_import == old.opset_import and new.ir_version == old.ir_version
        assert [entry.key for entry in new.metadata_props] == [entry.key for entry in old.metadata_props]
    assert sorted(path.name for path in folder.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx",
                                                              "split.csv"]  # no temporary file left
    predictor = predict.AgeGenderPredictor(folder / "model.int8.onnx", detector="none")
    assert predictor.calibration == calibration
    # again: it fits on the raw outputs, so the same temperatures come back
    assert run_calibrate(["--model", str(folder / "model.onnx"), *model_folder["argv"]], capsys)[0] == 0
    again = read_card(folder / "model.onnx")["calibration"]
    assert again["gender_temperature"] == pytest.approx(calibration["gender_temperature"], rel=0.03)


def test_a_dry_run_and_a_failed_run_write_nothing(model_folder, capsys, monkeypatch):
    folder = model_folder["folder"]
    stamps = {path.name: file_sha256(path) for path in folder.iterdir()}
    code, out, err = run_calibrate(["--model", str(folder / "model.int8.onnx"), *model_folder["argv"], "--dry-run"],
                                   capsys)
    assert code == 0 and "age temperature" in out and "wrote" not in out, err

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(folder / "model.json"))

    monkeypatch.setattr(calibrate, "write_card", full_disk)  # model.json is written after both ONNX files
    code, out, err = run_calibrate(["--model", str(folder / "model.int8.onnx"), *model_folder["argv"]], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error")]  # below the progress bars
    assert code == 1 and errors == [f"error: no space left on the device {folder / 'model.json'}: "
                                    "free some space and run again"]
    assert {path.name: file_sha256(path) for path in folder.iterdir()} == stamps


def test_calibrate_refuses_what_it_cannot_fit_with_one_line(model_folder, tmp_path, capsys):
    folder = model_folder["folder"]
    (folder / "model.keras").write_bytes(b"")
    no_split = tmp_path / "elsewhere"
    no_split.mkdir()
    shutil.copy(folder / "model.onnx", no_split / "model.onnx")
    cases = {str(folder / "missing.onnx"): "no such model file", str(folder / "model.keras"): "give the exported",
             str(no_split / "model.onnx"): "split.csv not found"}
    for model, message in cases.items():
        code, out, err = run_calibrate(["--model", model, *model_folder["argv"]], capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (model, err)
