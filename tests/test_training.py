"""generator.py, backbone.py, train.py and evaluate.py on tiny datasets the tests build."""
from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

import build_cache
import evaluate
import train
from backbone import AGE_BINS, AgeMAE, age_distribution_loss, build_model, expected_age
from generator import FaceDataset, age_band, pack_faces, split_table


def synthetic_table(root, count: int = 48, size: int = 80) -> pd.DataFrame:
    """Images whose brightness encodes the age and whose colour encodes the gender: learnable labels."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        age, gender = int(rng.integers(1, 90)), int(rng.integers(0, 2))
        image = np.full((size, size, 3), 40 + 2 * age, np.uint8)
        image[..., 2 if gender else 0] = 250
        image = cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))
        cv2.imwrite(str(root / f"{index}.jpg"), image)
        rows.append(dict(path=f"{index}.jpg", age=age, gender=gender))
    table = pd.DataFrame(rows)
    build_cache.write_cache(table, root / "cache.csv")
    return build_cache.load_cache(root / "cache.csv")


def test_model_outputs_and_age_arithmetic():
    model = build_model(image_size=32, width=8)
    assert model.output_names == ["age", "gender"] or set(model.output_names) == {"age", "gender"}
    outputs = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert outputs["age"].shape == (2, AGE_BINS) and outputs["gender"].shape == (2, 1)
    np.testing.assert_allclose(outputs["age"].sum(axis=1), 1, atol=1e-5)
    one_hot = np.eye(AGE_BINS, dtype=np.float32)[[30, 0]]
    uniform = np.full((1, AGE_BINS), 1 / AGE_BINS, np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(expected_age(np.vstack([one_hot, uniform]))), [30, 0, 50], atol=1e-4)
    mostly_30_or_60 = np.eye(AGE_BINS, dtype=np.float32)[[30, 60]] * 0.9 + 0.1 / AGE_BINS
    losses = keras.ops.convert_to_numpy(age_distribution_loss(np.array([30.0, 30.0]), mostly_30_or_60))
    assert losses[0] < losses[1]  # mass on the true age costs less than mass 30 years away
    metric = AgeMAE()
    metric.update_state(np.array([32.0, 0.0]), one_hot)
    assert float(metric.result()) == pytest.approx((2 + 0) / 2)


def test_split_is_reproducible_and_stratified(tmp_path):
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(2000)], "age": rng.integers(0, 90, 2000),
                          "gender": rng.integers(0, 2, 2000)})
    first, again, other = split_table(table, 7), split_table(table, 7), split_table(table, 8)
    assert all(first[name]["path"].tolist() == again[name]["path"].tolist() for name in first)
    assert first["test"]["path"].tolist() != other["test"]["path"].tolist()
    sizes = np.array([len(first[name]) for name in ("train", "val", "test")])
    assert np.abs(sizes - [1600, 200, 200]).max() <= 9  # whole groups per stratum (27 strata here)
    assert set().union(*(set(part["path"]) for part in first.values())) == set(table["path"])
    def strata(part):
        return pd.Series(age_band(part["age"]) * 2 + part["gender"]).value_counts(normalize=True)

    overall = strata(table)
    for part in first.values():
        assert (strata(part).reindex(overall.index, fill_value=0) - overall).abs().max() < 0.02


def test_augmentation_only_for_training(tmp_path):
    table = synthetic_table(tmp_path, count=8)
    validation = FaceDataset(table, tmp_path, 32, batch_size=8, augment=False)
    first = validation[0][0]
    validation.on_epoch_end()
    np.testing.assert_array_equal(first, validation[0][0])
    assert validation[0][1]["age"].tolist() == table["age"].tolist()  # order kept, labels aligned
    training = FaceDataset(table, tmp_path, 32, batch_size=8, augment=True)
    epoch_one = training[0][0]
    training.on_epoch_end()
    assert not np.array_equal(np.sort(epoch_one.ravel()), np.sort(training[0][0].ravel()))


def test_corrupt_and_missing_images_are_skipped(tmp_path, capsys):
    table = synthetic_table(tmp_path, count=6)
    (tmp_path / "2.jpg").write_bytes(b"garbage")
    (tmp_path / "4.jpg").unlink()
    dataset = FaceDataset(table, tmp_path, 32, batch_size=6, augment=False)
    images, targets, _ = dataset[0]
    assert len(images) == 4 and targets["age"].tolist() == table["age"].iloc[[0, 1, 3, 5]].tolist()
    assert dataset.unreadable == {"2.jpg", "4.jpg"}
    assert capsys.readouterr().err.count("skipping unreadable image") == 1  # reported once


def test_packed_cache_serves_the_same_faces(tmp_path):
    table = synthetic_table(tmp_path, count=10)
    packed = pack_faces(table, tmp_path, 32)
    from_files = FaceDataset(table, tmp_path, 32, batch_size=10)[0][0]
    from_packed = FaceDataset(table, tmp_path, 32, batch_size=10, packed=packed)[0][0]
    assert np.abs(from_files - from_packed).max() <= 2  # equal up to rounding in the resampling
    augmented, targets, _ = FaceDataset(table, tmp_path, 32, batch_size=10, augment=True, packed=packed)[0]
    assert augmented.shape == (10, 32, 32, 3) and len(targets["age"]) == 10


def test_face_metrics_by_hand():
    metrics = evaluate.face_metrics(np.array([20.0, 30, 40, 50]), np.array([22.0, 37, 40, 44]),
                                    np.array([1.0, 0, 1, 0]), np.array([0.9, 0.2, 0.4, 0.6]))
    assert {key: metrics[key] for key in ("n", "age_mae", "cs5", "gender_accuracy")} == \
        {"n": 4, "age_mae": (2 + 7 + 0 + 6) / 4, "cs5": 0.5, "gender_accuracy": 0.5}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic_table(root, count=60)
    out = root / "run"
    argv = ["--cache", str(root / "cache.csv"), "--root", str(root), "--out", str(out), "--epochs", "1",
            "--image-size", "32", "--width", "8", "--batch-size", "16"]
    assert train.main(argv) == 0
    return root, out, argv


def test_train_writes_every_artefact(trained_run):
    _, out, _ = trained_run
    for name in ("model.keras", "last.keras", "model.json", "log.csv", "curves.png", "split.csv"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").rglob("*")) and cv2.imread(str(out / "curves.png")) is not None
    card = json.loads((out / "model.json").read_text())
    assert card["input"]["size"] == 32 and card["input"]["colour_order"] == "BGR"
    split = card["data"]["split"]
    assert sum(split.values()) == 60 and split["train"] >= 44 and min(split.values()) > 0 and card["data"]["seed"] == 42
    assert set(card["metrics"]["test"]) == {"all", "cache"}  # every face, and each source (here one)
    assert {"n", "age_mae", "cs5", "gender_accuracy", "band_exact"} <= set(card["metrics"]["test"]["all"])
    assert "non-commercial" in card["licence"]
    if keras.backend.backend() == "tensorflow":
        assert (out / "model.onnx").is_file()


def test_train_refuses_to_overwrite_and_resumes(trained_run, capsys):
    root, out, argv = trained_run
    with pytest.raises(SystemExit):
        train.run_cli(lambda: train.main(argv))
    assert "--resume" in capsys.readouterr().err
    resume_argv = [*argv[:argv.index("--epochs")], "--epochs", "2", *argv[argv.index("--epochs") + 2:], "--resume"]
    stale = out / ".last.keras.k1ll3d_9.keras"  # what kill -9 during a checkpoint leaves beside the checkpoint
    stale.write_bytes(b"half a checkpoint")
    users = [out / name for name in (".split.csv.swp", ".model.keras.bak", ".run.json.orig")]
    for path in users:
        path.write_text("a user's file, named like ours")
    assert train.main(resume_argv) == 0
    assert not stale.exists() and not [p for p in out.iterdir() if p.name.startswith(".last.keras.")]
    assert all(path.read_text() == "a user's file, named like ours" for path in users)
    assert pd.read_csv(out / "log.csv")["epoch"].tolist() == [0, 1]


def test_evaluate_matches_predictions_by_hand(trained_run, capsys):
    root, out, _ = trained_run
    assert evaluate.main(["--model", str(out / "model.keras"), "--cache", str(root / "cache.csv"),
                          "--root", str(root), "--split", "all", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = build_cache.load_cache(root / "cache.csv")
    model = keras.models.load_model(out / "model.keras")
    images = FaceDataset(table, root, 32, batch_size=len(table))[0][0]
    plain, mirrored = model.predict(images, verbose=0), model.predict(images[:, :, ::-1], verbose=0)
    outputs = {name: (plain[name] + mirrored[name]) / 2 for name in plain}  # as predict.py averages them
    ages = outputs["age"] @ np.arange(AGE_BINS)
    errors = np.abs(ages - table["age"].to_numpy())
    assert reported["n"] == len(table)
    assert reported["age_mae"] == pytest.approx(errors.mean(), abs=1e-3)
    assert reported["cs5"] == pytest.approx((errors <= 5).mean())
    assert reported["gender_accuracy"] == pytest.approx(((outputs["gender"][:, 0] >= 0.5) == table["gender"]).mean())
    assert (out / "pred_vs_true.png").is_file() and (out / "error_by_age.png").is_file()


def test_short_real_training_beats_the_mean(utkface_dir, tmp_path):
    """A few epochs on a few hundred real UTKFace faces already beat predicting the mean age."""
    cache = tmp_path / "utk.csv"
    build_cache.main(["--utkface", str(utkface_dir), "--out", str(cache)])
    out = tmp_path / "run"
    assert train.main(["--cache", str(cache), "--root", str(utkface_dir.parent), "--out", str(out), "--epochs", "12",
                       "--image-size", "48", "--width", "16", "--batch-size", "32", "--packed"]) == 0
    card = json.loads((out / "model.json").read_text())
    split = pd.read_csv(out / "split.csv")
    table = build_cache.load_cache(cache).merge(split, on="path")
    train_mean = table.loc[table["split"] == "train", "age"].mean()
    held_out = table[table["split"] != "train"]
    mean_mae = (held_out["age"] - train_mean).abs().mean()
    model_mae = np.average([card["metrics"][s]["all"]["age_mae"] for s in ("val", "test")],
                           weights=[card["metrics"][s]["all"]["n"] for s in ("val", "test")])
    assert model_mae < mean_mae, (model_mae, mean_mae)


def test_two_seeded_runs_give_close_numbers(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    synthetic_table(root, count=60)
    cards = []
    for name in ("first", "second"):
        assert train.main(["--cache", str(root / "cache.csv"), "--root", str(root), "--out", str(tmp_path / name),
                           "--epochs", "2", "--image-size", "32", "--width", "8", "--batch-size", "16"]) == 0
        cards.append(json.loads((tmp_path / name / "model.json").read_text()))
    assert (tmp_path / "first" / "split.csv").read_text() == (tmp_path / "second" / "split.csv").read_text()
    first, second = (card["metrics"]["val"]["all"] for card in cards)
    assert abs(first["age_mae"] - second["age_mae"]) < 0.5
    assert first["gender_accuracy"] == second["gender_accuracy"]
