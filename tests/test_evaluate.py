"""evaluate.py against models whose outputs the test knows exactly.

The known model looks only at the leftmost quarter of a 32 x 32 face: its expected age is the mean
green value there (0-100) and its P(male) the mean red value / 255. Each image has one colour in its
left quarter and another in its right quarter, so mirror averaging (which predict.py does and
evaluate.py must do) predicts the mean of the two, not the left value. The expected figures below are
computed in this file from the pixel values, never with evaluate's own functions.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import mean

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

import evaluate
from build_cache import load_cache
from faces import make_framing
from model_card import FORMAT_VERSION, embed_in_onnx, write_card
from utils import run_cli

SIZE = 32  # the model's input and the images' side: framing a whole image is then the identity
QUARTER = SIZE // 4
AGE_BINS = 101
BAND_RANGES = [(0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 200)]
BAND_NAMES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
RACE_NAMES = ["White", "Black", "Asian", "Indian", "Others"]
NAN = float("nan")

# true age, true gender (1 = male), race, green left / right (the age), red left / right (P(male) * 255),
# and how the file is broken, if it is
ROWS = [
    (1, 0, 0, 2, 4, 60, 40, None),
    (5, 1, 1, 10, 0, 250, 200, None),
    (15, 0, 2, 24, 20, 200, 20, None),  # female only after mirror averaging (left alone: P(male) 0.78)
    (25, 1, 0, 30, 20, 100, 180, None),  # male only after mirror averaging
    (34, 0, 3, 80, 20, 255, 255, None),  # two bands off
    (45, 1, 4, 42, 40, 30, 30, None),
    (72, 0, 0, 60, 72, 0, 10, None),
    (NAN, 1, NAN, 50, 50, 200, 200, None),  # gender only, like LFW
    (30, NAN, 1, 36, 30, 128, 128, None),  # age only
    (40, 1, 0, 40, 40, 250, 250, "garbage"),
    (88, 1, 0, 100, 90, 250, 250, None),
    (2, 1, 2, 0, 4, 100, 100, None),
    (20, 0, 1, 20, 20, 0, 0, "missing"),
]


# --- the known model, as Keras and as ONNX ----------------------------------------------------------

def known_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense weights over the (blue, green, red) means of the left quarter: age probabilities
    green/100 at 100 years and the rest at 0 years (expected age = green), P(male) = red / 255."""
    age_weights = np.zeros((3, AGE_BINS), np.float32)
    age_weights[1, 100], age_weights[1, 0] = 1 / 100, -1 / 100
    age_bias = np.zeros(AGE_BINS, np.float32)
    age_bias[0] = 1
    gender_weights = np.array([[0], [0], [1 / 255]], np.float32)
    return age_weights, age_bias, gender_weights


def known_card() -> dict:
    return {"format_version": FORMAT_VERSION, "input": {"size": SIZE}, "framing": make_framing(),
            "detector": {"name": "yunet", "score_threshold": 0.6}}


def build_keras_model(path: Path) -> None:
    import keras
    from keras import layers

    image = keras.Input((SIZE, SIZE, 3), name="image")
    means = layers.GlobalAveragePooling2D()(layers.Cropping2D(((0, 0), (0, SIZE - QUARTER)))(image))
    age_layer, gender_layer = layers.Dense(AGE_BINS, name="age"), layers.Dense(1, name="gender")
    model = keras.Model(image, {"age": age_layer(means), "gender": gender_layer(means)})
    age_weights, age_bias, gender_weights = known_weights()
    age_layer.set_weights([age_weights, age_bias])
    gender_layer.set_weights([gender_weights, np.zeros(1, np.float32)])
    model.save(path)
    write_card(path.parent, known_card())


def build_onnx_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    age_weights, age_bias, gender_weights = known_weights()
    constants = {"starts": np.array([0]), "ends": np.array([QUARTER]), "axes": np.array([2]),
                 "age_weights": age_weights, "age_bias": age_bias, "gender_weights": gender_weights}
    nodes = [helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["left"]),
             helper.make_node("ReduceMean", ["left"], ["means"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["means", "age_weights"], ["age_logits"]),
             helper.make_node("Add", ["age_logits", "age_bias"], ["age"]),
             helper.make_node("MatMul", ["means", "gender_weights"], ["gender"])]
    graph = helper.make_graph(
        nodes, "known", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("age", TensorProto.FLOAT, [None, AGE_BINS]),
         helper.make_tensor_value_info("gender", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    embed_in_onnx(path, known_card())


def write_faces(root: Path, folder: str, rows: list[tuple], source: str | None = None) -> pd.DataFrame:
    """One PNG per row under root/folder (broken as the row says); the cache table for them."""
    (root / folder).mkdir(parents=True)
    records = []
    for index, (age, gender, race, green_left, green_right, red_left, red_right, broken) in enumerate(rows):
        path = f"{folder}/{index}.png"
        image = np.full((SIZE, SIZE, 3), 77, np.uint8)  # the middle half is ignored by the model
        image[:, :QUARTER] = (90, green_left, red_left)
        image[:, -QUARTER:] = (10, green_right, red_right)
        if broken == "garbage":
            (root / path).write_bytes(b"not a png")
        elif broken is None:
            assert cv2.imwrite(str(root / path), image)
        records.append({"path": path, "age": age, "gender": gender, "race": race,
                        **({"source": source} if source else {})})
    return pd.DataFrame(records)


@pytest.fixture(scope="module")
def known(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("known")
    (base / "model").mkdir()
    build_keras_model(base / "model" / "model.keras")
    build_onnx_model(base / "model" / "model.onnx")
    write_faces(base / "data", "utk", ROWS).to_csv(base / "utk.csv", index=False)
    return {"base": base, "keras": base / "model" / "model.keras", "onnx": base / "model" / "model.onnx",
            "cache": base / "utk.csv", "root": base / "data"}


# --- the figures, computed here -------------------------------------------------------------------

def scored_rows(rows: list[tuple]) -> list[dict]:
    """Each readable row with its mirror-averaged predictions, as the known model gives them."""
    return [{"age": age, "gender": gender, "race": race, "predicted_age": (green_left + green_right) / 2,
             "male_probability": (red_left + red_right) / 2 / 255}
            for age, gender, race, green_left, green_right, red_left, red_right, broken in rows if broken is None]


def band_of(age_years: float) -> int:
    return next(index for index, (low, high) in enumerate(BAND_RANGES) if low <= age_years <= high)


def expected_figures(rows: list[dict]) -> dict:
    def share(flags):
        return mean(flags) if flags else None

    aged = [r for r in rows if r["age"] == r["age"]]  # NaN != NaN
    errors = [abs(r["predicted_age"] - r["age"]) for r in aged]
    gaps = [abs(band_of(round(r["predicted_age"])) - band_of(r["age"])) for r in aged]
    gendered = [r for r in rows if r["gender"] == r["gender"]]

    def right(subset):
        return [(r["male_probability"] >= 0.5) == (r["gender"] == 1) for r in subset]

    return {"n": len(rows), "n_age": len(aged), "age_mae": share(errors), "cs5": share([e <= 5 for e in errors]),
            "band_exact": share([g == 0 for g in gaps]), "band_within_1": share([g <= 1 for g in gaps]),
            "n_gender": len(gendered), "gender_accuracy": share(right(gendered)),
            "female_accuracy": share(right([r for r in gendered if r["gender"] == 0])),
            "male_accuracy": share(right([r for r in gendered if r["gender"] == 1]))}


def expected_groups(rows: list[dict]) -> dict[tuple[str, str], dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        band = BAND_NAMES[band_of(row["age"])] if row["age"] == row["age"] else "age unknown"
        gender = {0: "female", 1: "male"}.get(row["gender"], "gender unknown")
        keys = [("age band", band), ("age band x gender", f"{band} {gender}")]
        if row["race"] == row["race"]:
            keys.append(("race", RACE_NAMES[int(row["race"])]))
        for key in keys:
            groups.setdefault(key, []).append(row)
    return {key: expected_figures(members) for key, members in groups.items()}


def assert_figures(reported: dict, expected: dict) -> None:
    for key, value in expected.items():
        if value is None:
            assert reported[key] is None, key
        else:
            assert reported[key] == pytest.approx(value, abs=1e-4), key


def run_evaluate(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def strict_json(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- tests ----------------------------------------------------------------------------------------

def test_the_hand_figures_are_what_this_file_claims():
    """Anchor the in-test arithmetic with figures worked out on paper from ROWS."""
    figures = expected_figures(scored_rows(ROWS))
    assert figures["n"] == 11 and figures["n_age"] == 10 and figures["n_gender"] == 10
    assert figures["age_mae"] == pytest.approx(45 / 10) and figures["cs5"] == pytest.approx(0.6)
    assert figures["band_exact"] == pytest.approx(0.6) and figures["band_within_1"] == pytest.approx(0.9)
    assert figures["gender_accuracy"] == pytest.approx(0.7)
    assert figures["female_accuracy"] == pytest.approx(3 / 4) and figures["male_accuracy"] == pytest.approx(4 / 6)
    # Without mirror averaging (left quarter only) the figures differ: the test can tell them apart.
    left_only = [(a, g, r, gl, gl, rl, rl, b) for a, g, r, gl, _, rl, _, b in ROWS]
    assert expected_figures(scored_rows(left_only))["gender_accuracy"] != figures["gender_accuracy"]
    assert expected_figures(scored_rows(left_only))["age_mae"] != figures["age_mae"]


@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_predictions_are_per_row_mirror_averaged_and_aligned(known, kind):
    run, card = evaluate.load_model(known[kind])
    table = load_cache(known["cache"])
    table.index = table.index[::-1] + 100  # any index: the predictions must keep it
    predictions = evaluate.predict_table(run, table, known["root"], card["input"]["size"], framing=card["framing"],
                                         batch_size=4, workers=2)
    assert predictions.index.equals(table.index)
    for (_, row), (_, predicted), spec in zip(table.iterrows(), predictions.iterrows(), ROWS):
        age, gender, race, green_left, green_right, red_left, red_right, broken = spec
        if broken:
            assert np.isnan(predicted["predicted_age"]) and np.isnan(predicted["male_probability"])
        else:
            assert predicted["predicted_age"] == pytest.approx((green_left + green_right) / 2, abs=1e-3)
            assert predicted["male_probability"] == pytest.approx((red_left + red_right) / 510, abs=1e-5)


@pytest.mark.parametrize("kind", ["keras", "onnx"])
def test_json_figures_and_groups_match_the_hand_computation(known, kind, tmp_path, capsys):
    code, out, err = run_evaluate(["--model", str(known[kind]), "--cache", str(known["cache"]), "--root",
                                   str(known["root"]), "--split", "all", "--groups", "--json", "--out",
                                   str(tmp_path / "plots")], capsys)
    assert code == 0, err
    document = strict_json(out)  # stdout is one JSON object, no NaN
    rows = scored_rows(ROWS)
    assert_figures(document, expected_figures(rows))
    assert document["unreadable"] == 2 and document["split"] == "all"
    assert "skipped 2 unreadable" in err and "don't tune" not in err
    assert list(document["sources"]) == ["utk"]
    assert_figures(document["sources"]["utk"], expected_figures(rows))
    reported = {(group["by"], group["group"]): group for group in document["groups"]}
    expected = expected_groups(rows)
    assert set(reported) == set(expected)
    assert ("race", "Others") in reported and ("age band x gender", "age unknown male") in reported
    for key, figures in expected.items():
        assert reported[key]["source"] == "utk"
        assert_figures(reported[key], figures)
    # spot checks worked out on paper: 34-year-old female predicted 50 (two bands off), wrong gender
    assert reported[("age band x gender", "30-39 female")]["band_within_1"] == 0
    assert reported[("age band x gender", "30-39 female")]["female_accuracy"] == 0
    assert reported[("race", "White")]["n"] == 4 and reported[("race", "White")]["age_mae"] == pytest.approx(15 / 4)
    for name in ("pred_vs_true.png", "error_by_age.png"):
        assert cv2.imread(str(tmp_path / "plots" / name)) is not None
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["error_by_age.png", "pred_vs_true.png",
                                                                      "reliability_utk.png"]


def test_several_caches_report_per_source(known, tmp_path, capsys):
    lfw_rows = [(NAN, 1, NAN, 30, 30, 200, 100, None), (NAN, 0, NAN, 30, 30, 200, 100, None),
                (NAN, 0, NAN, 30, 30, 20, 10, None)]
    write_faces(tmp_path / "lfw_root", "lfw", lfw_rows, source="lfw").to_csv(tmp_path / "people.csv", index=False)
    code, out, err = run_evaluate(["--model", str(known["onnx"]), "--cache", str(known["cache"]),
                                   str(tmp_path / "people.csv"), "--root", str(known["root"]),
                                   str(tmp_path / "lfw_root"), "--split", "all", "--json", "--out", str(tmp_path)],
                                  capsys)
    assert code == 0, err
    document = strict_json(out)
    assert list(document["sources"]) == ["utk", "lfw"]  # the cache's name, else its source column
    assert_figures(document["sources"]["lfw"], expected_figures(scored_rows(lfw_rows)))
    assert document["sources"]["lfw"]["age_mae"] is None and document["sources"]["lfw"]["n_age"] == 0
    assert_figures(document["sources"]["utk"], expected_figures(scored_rows(ROWS)))
    assert_figures(document, expected_figures(scored_rows(ROWS) + scored_rows(lfw_rows)))
    assert "groups" not in document

    code, out, err = run_evaluate(["--model", str(known["onnx"]), "--cache", str(known["cache"]),
                                   str(tmp_path / "people.csv"), "--root", str(known["root"]), "--split", "all",
                                   "--groups", "--out", str(tmp_path)], capsys)
    assert code == 0, err  # one root for both: the LFW images are not there, so they are all unreadable
    assert "skipped 5 unreadable" in err
    lines = out.splitlines()
    assert lines[0].startswith("faces scored: 11 of 16")
    assert any(line.split()[:2] == ["all", "11"] for line in lines)  # the overall row above the sources
    assert any("age band x gender" in line and "70+ female" in line for line in lines)


def test_split_rows_and_the_test_split_note(known, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    shutil.copy(known["onnx"], model)
    table = pd.read_csv(known["cache"])
    pd.DataFrame({"path": table["path"], "split": ["test", "val"] * 6 + ["test"]}).to_csv(
        tmp_path / "split.csv", index=False)
    code, out, err = run_evaluate(["--model", str(model), "--cache", str(known["cache"]), "--root", str(known["root"]),
                                   "--json"], capsys)
    assert code == 0, err
    assert "test split: report, don't tune" in err
    test_rows = [row for position, row in enumerate(ROWS) if position % 2 == 0]
    assert_figures(strict_json(out), expected_figures(scored_rows(test_rows)))
    code, out, err = run_evaluate(["--model", str(model), "--cache", str(known["cache"]), "--root", str(known["root"]),
                                   "--split", "val", "--json"], capsys)
    assert code == 0 and "don't tune" not in err
    assert strict_json(out)["n"] == len(scored_rows(ROWS[1::2]))


def bad_input_cases(known, tmp_path) -> dict[str, tuple[list[str], str]]:
    not_a_model = tmp_path / "broken" / "model.keras"
    not_a_model.parent.mkdir()
    not_a_model.write_bytes(b"PK\x03\x04 not really a zip")
    write_card(not_a_model.parent, known_card())
    not_onnx = tmp_path / "broken" / "model.onnx"
    not_onnx.write_text("hello")
    other_model = tmp_path / "other" / "model.onnx"
    other_model.parent.mkdir()
    shutil.copy(known["onnx"], other_model)
    pd.DataFrame({"path": ["elsewhere/1.png"], "split": ["test"]}).to_csv(other_model.with_name("split.csv"),
                                                                          index=False)
    data = ["--cache", str(known["cache"]), "--root", str(known["root"]), "--out", str(tmp_path / "plots")]
    return {
        "missing model": (["--model", str(tmp_path / "nope.keras"), *data], "no such model file"),
        "keras file that is not a model": (["--model", str(not_a_model), *data, "--split", "all"], "cannot load"),
        "onnx file that is not a model": (["--model", str(not_onnx), *data, "--split", "all"], "cannot load"),
        "not a model format": (["--model", str(known["cache"]), *data], "not a model"),
        "no split.csv beside the model": (["--model", str(known["onnx"]), *data], "split.csv not found"),
        "cache without the split's rows": (["--model", str(other_model), *data], "are in the 'test' split"),
        "missing cache": (["--model", str(known["onnx"]), "--cache", str(tmp_path / "none.csv"), "--split", "all"],
                          "no such file"),
        "plots folder is a file": (["--model", str(known["onnx"]), *data[:4], "--out", str(known["cache"]),
                                    "--split", "all"], "is a file"),
    }


def test_bad_inputs_give_one_line(known, tmp_path, capsys):
    for name, (argv, message) in bad_input_cases(known, tmp_path).items():
        code, out, err = run_evaluate(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (name, err)
    assert not (tmp_path / "plots").exists()  # nothing written by a failed run


def test_roots_must_match_the_caches(known, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--model", "m.keras", "--cache", "a.csv", "b.csv", "c.csv", "--root", "x", "y"])
    assert exit_info.value.code == 2
    assert "one per cache (3), not 2" in capsys.readouterr().err


def test_train_py_scores_held_out_rows_the_same_way(known):
    """train.held_out_metrics: the model card's figures, from a FaceDataset, as evaluate.py computes them."""
    import keras

    from build_cache import load_source
    from generator import FaceDataset
    from train import held_out_metrics

    dataset = FaceDataset(load_source(known["cache"], known["root"]), known["root"], SIZE, batch_size=5)
    metrics = held_out_metrics(keras.models.load_model(known["keras"]), dataset)
    assert set(metrics) == {"all", Path(known["cache"]).stem}
    expected = expected_figures(scored_rows(ROWS))
    assert_figures(metrics["all"], {key: expected[key] for key in ("n", "age_mae", "cs5", "gender_accuracy")})

# --- reliability -----------------------------------------------------------------------------------

ECE_EDGES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001]  # the last bin holds a confidence of 1.0


def expected_reliability(rows: list[dict], gender_temperature: float = 1.0) -> dict:
    """Gender ECE and the coverage of the 68% and 95% age ranges, computed here from the known model's
    outputs: P(male) = mean red / 255 (its logit divided by the temperature), and an age distribution
    with (100 - mean green) % at 0 years and the rest at 100 years."""
    def p_male(row: dict) -> float:
        p = row["male_probability"]
        if p in (0.0, 1.0):
            return p
        return 1 / (1 + math.exp(-math.log(p / (1 - p)) / gender_temperature))

    gendered = [(p_male(r), r["gender"] == 1) for r in rows if r["gender"] == r["gender"]]
    gap_sum = 0.0
    for low, high in zip(ECE_EDGES[:-1], ECE_EDGES[1:]):
        members = [(max(p, 1 - p), (p >= 0.5) == male) for p, male in gendered if low <= max(p, 1 - p) < high]
        if members:
            gap_sum += abs(sum(right for _, right in members) - sum(conf for conf, _ in members))
    coverage = {}
    for mass in (68, 95):
        quantiles = ((100 - mass) / 200, (100 + mass) / 200)
        held = []
        for r in (r for r in rows if r["age"] == r["age"]):
            at_zero = 1 - r["predicted_age"] / 100  # the distribution's mass at 0 years
            low, high = (0 if at_zero >= q - 1e-9 else 100 for q in quantiles)
            held.append(low <= r["age"] <= high)
        coverage[f"range{mass}_coverage"] = mean(held)
    return {"gender_ece": gap_sum / len(gendered), **coverage}


@pytest.mark.parametrize("calibrated", [False, True])
def test_reliability_figures_match_the_hand_computation(known, tmp_path, capsys, calibrated):
    model = tmp_path / "model" / "model.onnx"
    model.parent.mkdir()
    shutil.copy(known["onnx"], model)
    if calibrated:  # only the gender temperature: the known model's age distribution has no room to move
        embed_in_onnx(model, {**known_card(), "calibration": {"gender_temperature": 2.0, "age_temperature": 1.0}})
    argv = ["--model", str(model), "--cache", str(known["cache"]), "--root", str(known["root"]), "--split", "all",
            "--out", str(tmp_path / "plots")]
    code, out, err = run_evaluate(argv + ["--json"], capsys)
    assert code == 0, err
    document = strict_json(out)
    expected = expected_reliability(scored_rows(ROWS), 2.0 if calibrated else 1.0)
    assert document["calibrated"] is calibrated
    assert_figures(document, expected)
    assert_figures(document["sources"]["utk"], expected)
    if calibrated:
        assert strict_json(run_evaluate(argv + ["--json", "--uncalibrated"], capsys)[1])["gender_ece"] == \
            pytest.approx(expected_reliability(scored_rows(ROWS))["gender_ece"], abs=1e-4)
    # --min-gender-confidence: the share of faces answered and their accuracy, by hand at P = 0.8
    answers = [((r["male_probability"] >= 0.5) == (r["gender"] == 1),
                max(r["male_probability"], 1 - r["male_probability"])) for r in scored_rows(ROWS) if r["gender"] == r["gender"]]
    at_08 = next(row for row in document["abstention"] if row["min_gender_confidence"] == 0.8)
    if not calibrated:
        answered = [right for right, confidence in answers if round(confidence, 3) >= 0.8]
        assert at_08["answered"] == pytest.approx(len(answered) / len(answers))
        assert at_08["accuracy"] == pytest.approx(mean(answered))
    code, out, err = run_evaluate(argv, capsys)
    assert code == 0 and "68% range covers" in out and "gender ECE" in out and "P=0.95" in out, err
    assert cv2.imread(str(tmp_path / "plots" / "reliability_utk.png")) is not None
@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_stderr_holds_only_this_scripts_messages(known, kind, tmp_path):
    """As a script: no TensorFlow start-up lines (an .onnx model never starts TensorFlow; a .keras one
    starts it quietly), only the progress bar and the script's own notes."""
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--model", str(known[kind]), "--cache",
                             str(known["cache"]), "--root", str(known["root"]), "--split", "all", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith(("evaluate:", "warning: skipped")) for line in lines), lines
