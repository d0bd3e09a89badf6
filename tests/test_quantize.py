"""quantize.py on the shipped float model and real UTKFace faces: the int8 model predicts like the float one."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import build_cache
import predict
import quantize
from model_card import read_card
from utils import UserError, file_sha256

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_FLOAT = ROOT / "models" / "default" / "model.onnx"


@pytest.fixture(scope="module")
def float_model(utkface_dir, tmp_path_factory) -> dict:
    """A copy of the shipped float model whose split.csv puts half of the faces in train, half in val."""
    base = tmp_path_factory.mktemp("quantize")
    cache = base / "utk.csv"
    assert build_cache.main(["--utkface", str(utkface_dir), "--out", str(cache)]) == 0
    table = build_cache.load_cache(cache)
    (base / "model").mkdir()
    shutil.copy(SHIPPED_FLOAT, base / "model" / "model.onnx")
    pd.DataFrame({"source": "utkface", "path": table["path"],
                  "split": np.where(np.arange(len(table)) % 2, "val", "train")}).to_csv(base / "model" / "split.csv")
    return {"model": base / "model" / "model.onnx", "cache": cache, "root": utkface_dir.parent}


def quantize_argv(float_model: dict, *extra: str) -> list[str]:
    return ["--model", str(float_model["model"]), "--cache", str(float_model["cache"]), "--root",
            str(float_model["root"]), "--calibration-faces", "64", "--check-faces", "120", *extra]


def test_the_int8_model_predicts_like_the_float_one(float_model, utkface_dir, capsys):
    assert quantize.main(quantize_argv(float_model)) == 0
    int8_path = float_model["model"].with_name("model.int8.onnx")
    float_card, int8_card = read_card(float_model["model"]), read_card(int8_path)
    quantization = int8_card.pop("quantization")
    assert int8_card == float_card
    assert quantization["float_model_sha256"] == file_sha256(float_model["model"])
    assert quantization["validation_faces"] >= 100 and quantization["calibration_faces"] == 64
    assert quantization["gender_agreement"] >= 0.97 and quantization["mean_age_change_years"] <= 1.0
    mae_line = f"age MAE {quantization['float_age_mae']:.3f} -> {quantization['int8_age_mae']:.3f}"
    assert mae_line in capsys.readouterr().out

    float_predictor, int8_predictor = (predict.AgeGenderPredictor(path, detector="none")
                                       for path in (float_model["model"], int8_path))
    images = [predict.load_photo(path) for path in sorted(utkface_dir.iterdir())[:40]]
    crops = np.concatenate([float_predictor.frame(image)[1] for image in images])
    float_faces, int8_faces = float_predictor.predict_faces(crops), int8_predictor.predict_faces(crops)
    age_change = np.array([abs(a["age"] - b["age"]) for a, b in zip(float_faces, int8_faces)])
    assert age_change.mean() < 1.0 and age_change.max() < 5
    assert sum(a["gender"] == b["gender"] for a, b in zip(float_faces, int8_faces)) >= 38
    # the age distribution stays float: fine probabilities, not steps of 1/256, so its quantiles stay right
    age_probs = int8_predictor.run_model(crops)["age"]
    assert np.allclose(age_probs.sum(axis=1), 1, atol=1e-4) and ((age_probs > 0) & (age_probs < 1 / 256)).any()


def test_quantize_refuses_what_it_must_not_overwrite_or_redo(float_model, tmp_path):
    int8_path = float_model["model"].with_name("model.int8.onnx")
    if not int8_path.exists():
        assert quantize.main(quantize_argv(float_model)) == 0
    before = int8_path.read_bytes()
    with pytest.raises(UserError, match="exists"):
        quantize.main(quantize_argv(float_model))
    for an_input in (float_model["model"], float_model["cache"], float_model["model"].with_name("split.csv")):
        with pytest.raises(UserError, match="overwrite the input"):
            quantize.main(quantize_argv(float_model, "--out", str(an_input)))
    alone = tmp_path / "alone" / "model.onnx"  # no split.csv beside it: nothing to calibrate or check on
    alone.parent.mkdir()
    shutil.copy(float_model["model"], alone)
    with pytest.raises(UserError, match="split.csv not found: quantize.py calibrates on the training split"):
        quantize.main([*quantize_argv(float_model)[:1], str(alone), *quantize_argv(float_model)[2:]])
    with pytest.raises(UserError, match="already quantized"):
        quantize.main([*quantize_argv(float_model)[:1], str(int8_path), *quantize_argv(float_model)[2:],
                       "--out", str(tmp_path / "twice.onnx")])
    small = tmp_path / "small" / "model.onnx"  # a split with too few training faces to calibrate on
    small.parent.mkdir()
    shutil.copy(float_model["model"], small)
    split = pd.read_csv(float_model["model"].with_name("split.csv"))
    train_rows = split.index[split["split"] == "train"]
    split.drop(train_rows[10:]).to_csv(small.with_name("split.csv"), index=False)
    with pytest.raises(UserError, match="the training split holds only 10 faces; quantize.py needs 32"):
        quantize.main([*quantize_argv(float_model)[:1], str(small), *quantize_argv(float_model)[2:]])
    assert int8_path.read_bytes() == before and not (tmp_path / "twice.onnx").exists()
    assert sorted(p.name for p in alone.parent.iterdir()) == ["model.onnx"]


def test_a_broken_calibration_writes_nothing(float_model, tmp_path, monkeypatch):
    """Calibrated on one flat grey face, the int8 ranges cannot hold real faces: the check against the
    float model on validation faces refuses it, and no file is left behind."""
    monkeypatch.setattr(quantize, "framed_faces", lambda table, card: np.full((len(table), 96, 96, 3), 128, np.uint8))
    out = tmp_path / "broken.int8.onnx"
    with pytest.raises(UserError, match="strays too far"):
        quantize.main(quantize_argv(float_model, "--out", str(out)))
    assert list(tmp_path.iterdir()) == []


def test_as_a_script_it_never_starts_tensorflow(float_model, tmp_path):
    """stderr is for the user's messages: quantize.py works on ONNX files and never imports TensorFlow,
    whose start-up lines no log level silences."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "quantize.py"),
                             *quantize_argv(float_model, "--out", str(tmp_path / "model.int8.onnx"))],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    assert not imported & {"tensorflow", "keras", "jax"}
    messages = [line for line in lines if not line.startswith("import time:")]
    assert all(line.startswith("evaluate:") for line in messages), messages  # the progress bar only
