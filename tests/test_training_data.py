"""What training learns from: honest splits, masked labels, several sources, exact packed crops, resume."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from test_training import synthetic_table

import build_cache
import train
from build_cache import LANDMARK_COLUMNS
from faces import FACE_TEMPLATE, make_framing
from generator import FaceDataset, age_band, pack_faces, sampling_probabilities, split_table


def people_table(people: int = 300, photos_per_person: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for person in range(people):
        age, gender = int(rng.integers(0, 90)), int(rng.integers(0, 2))
        rows += [dict(path=f"nm{person:07d}/{photo}.jpg", age=age + photo, gender=gender, source="imdb",
                      group=f"nm{person:07d}") for photo in range(photos_per_person)]
    return pd.DataFrame(rows)


def test_split_keeps_each_person_in_one_split_and_honours_every_fraction():
    table = people_table()
    for fractions in ({"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 0.6, "val": 0.1, "test": 0.3}):
        splits = split_table(table, seed=5, fractions=fractions)
        people = {name: set(part["group"]) for name, part in splits.items()}
        assert not (people["train"] & people["val"] or people["train"] & people["test"] or people["val"] & people["test"])
        assert sum(len(part) for part in splits.values()) == len(table)
        for name, share in fractions.items():
            assert abs(len(splits[name]) / len(table) - share) < 0.03, (name, len(splits[name]))


def test_identical_images_travel_together_and_tiny_tables_still_split():
    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(40)], "age": np.arange(40) * 2.0,
                          "gender": np.arange(40) % 2 * 1.0, "content_hash": [f"h{i // 2}" for i in range(40)]})
    splits = split_table(table, seed=1)
    hashes = {name: set(part["content_hash"]) for name, part in splits.items()}
    assert not (hashes["train"] & hashes["test"] or hashes["train"] & hashes["val"] or hashes["val"] & hashes["test"])
    tiny = split_table(table.head(5), seed=1)  # one row per stratum: nothing to stratify, still three splits
    assert all(len(part) >= 1 for part in tiny.values()) and sum(map(len, tiny.values())) == 5


def test_unknown_labels_weigh_nothing(tmp_path):
    table = synthetic_table(tmp_path, count=8)
    table.loc[[1, 4], "age"] = np.nan  # say, LFW rows: gender only
    table.loc[[6], "gender"] = np.nan
    images, targets, weights = FaceDataset(table, tmp_path, 32, batch_size=8)[0]
    assert weights["age"].tolist() == [1, 0, 1, 1, 0, 1, 1, 1] and weights["gender"].tolist() == [1] * 6 + [0, 1]
    assert np.isfinite(targets["age"]).all() and np.isfinite(targets["gender"]).all()


def test_sources_take_their_weighted_share_and_genders_are_balanced():
    table = pd.DataFrame({"path": [f"{i}" for i in range(1000)], "age": np.nan, "gender": 1.0,
                          "source": ["lfw"] * 800 + ["utk"] * 200})
    table.loc[:99, "gender"] = 0.0  # lfw: 100 women, 700 men
    table.loc[800:, "age"] = 30.0
    probability = sampling_probabilities(table, {"lfw": 1.0, "utk": 3.0})
    assert probability[800:].sum() == pytest.approx(0.75) and probability[:800].sum() == pytest.approx(0.25)
    assert probability[:100].sum() == pytest.approx(probability[100:800].sum())  # women as often as men
    assert probability.sum() == pytest.approx(1.0)


def test_packed_crops_equal_file_crops_at_every_size(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for index, side in enumerate((120, 700, 1600)):  # no shrinking, and one and several pyramid halvings
        image = cv2.GaussianBlur(rng.integers(0, 255, (side, side + 37, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(tmp_path / f"{index}.png"), image)
        landmarks = FACE_TEMPLATE * side * 0.6 + side * 0.2 + rng.normal(0, 2, (5, 2))
        rows.append(dict(path=f"{index}.png", age=30.0, gender=1.0, face_x1=side * 0.2, face_y1=side * 0.2,
                         face_x2=side * 0.8, face_y2=side * 0.8, face_score=0.9,
                         **dict(zip(LANDMARK_COLUMNS, landmarks.ravel()))))
    rows.append(dict(path="0.png", age=40.0, gender=0.0, face_x1=10, face_y1=10, face_x2=100, face_y2=110))
    table = pd.DataFrame(rows)  # the same photo twice, with two different faces
    for framing in (make_framing("landmarks", 1.0), make_framing("box", 1.3)):
        for size in (32, 44, 60, 96, 100):
            packed = pack_faces(table, tmp_path, size, framing)
            from_files = FaceDataset(table, tmp_path, size, 8, framing=framing)[0][0]
            from_packed = FaceDataset(table, tmp_path, size, 8, framing=framing, packed=packed)[0][0]
            np.testing.assert_array_equal(from_files, from_packed, err_msg=f"{framing['method']} {size}")
    assert len(list(tmp_path.glob("packed_*.valid.npy"))) == 10  # each framing and size keyed apart


def test_a_resumed_run_continues_the_schedule_and_the_data_of_an_uninterrupted_one(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    synthetic_table(root, count=40)
    common = ["--cache", str(root / "cache.csv"), "--root", str(root), "--image-size", "32", "--width", "8",
              "--batch-size", "16", "--min-lr", "1e-4", "--patience", "10"]
    assert train.main([*common, "--out", str(tmp_path / "whole"), "--epochs", "3"]) == 0
    assert train.main([*common, "--out", str(tmp_path / "parts"), "--epochs", "1"]) == 0
    assert train.main([*common, "--out", str(tmp_path / "parts"), "--epochs", "3", "--resume"]) == 0
    whole, parts = (pd.read_csv(tmp_path / name / "log.csv") for name in ("whole", "parts"))
    assert parts["epoch"].tolist() == [0, 1, 2]
    # after the resume, the learning rate is the 3-epoch schedule's, never the 1-epoch run's floor or 0
    np.testing.assert_allclose(parts["learning_rate"][1:], whole["learning_rate"][1:], rtol=1e-5)
    assert (parts["learning_rate"][1:] > 0).all() and whole["learning_rate"].iloc[-1] == pytest.approx(1e-4, rel=1e-3)
    # and the training data of epoch 2 is the uninterrupted run's epoch 2
    table = build_cache.load_cache(root / "cache.csv").assign(source="cache", root=str(root))
    fresh = FaceDataset(table, root, 32, 16, augment=True, epoch=2)
    stepped = FaceDataset(table, root, 32, 16, augment=True)
    stepped.on_epoch_end(), stepped.on_epoch_end()
    np.testing.assert_array_equal(fresh.order, stepped.order)
    np.testing.assert_array_equal(fresh[1][0], stepped[1][0])


def test_checkpoints_survive_a_full_disk(tmp_path):
    """A save that fails half-way (file size limit, as on a full disk) leaves the last good model."""
    script = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
import keras
from backbone import build_model
from callbacks import SafeCheckpoint
model = build_model(32, 8)
checkpoint = SafeCheckpoint(__import__("pathlib").Path({str(tmp_path / "model.keras")!r}))
checkpoint.set_model(model)
checkpoint.on_epoch_end(0)
good = open({str(tmp_path / "model.keras")!r}, "rb").read()
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
try:
    checkpoint.on_epoch_end(1)
except OSError:
    print("save failed")
assert open({str(tmp_path / "model.keras")!r}, "rb").read() == good
print("kept")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "save failed" in result.stdout and "kept" in result.stdout, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # no temporary file left behind


def test_card_records_box_framing_for_a_cache_without_landmarks(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    synthetic_table(root, count=30)
    out = tmp_path / "run"
    assert train.main(["--cache", str(root / "cache.csv"), "--root", str(root), "--out", str(out), "--epochs", "1",
                       "--image-size", "32", "--width", "8", "--batch-size", "16", "--limit", "20"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["format_version"] == 2 and card["framing"]["method"] == "box"
    assert card["framing"]["rows_by_method"] == {"landmarks": 0, "box": 20}
    assert card["training"]["arguments"]["limit"] == 20 and card["data"]["sources"]["cache"]["rows"] == 20
    assert "chose nothing" in card["metrics_note"]


def test_age_band_edges():
    assert age_band([0, 2, 3, 9, 10, 69, 70, 100, np.nan]).tolist() == [0, 0, 1, 1, 2, 7, 8, 8, -1]


def test_batches_are_never_empty_and_divide_over_the_devices(tmp_path):
    table = synthetic_table(tmp_path, count=9)
    (tmp_path / "8.jpg").write_bytes(b"broken")  # the last batch holds only this image
    single = FaceDataset(table, tmp_path, 32, batch_size=4)
    images, targets, weights = single[2]
    assert len(images) == 1 and weights["age"].tolist() == [0] and weights["gender"].tolist() == [0]
    two_devices = FaceDataset(table.head(7), tmp_path, 32, batch_size=4, batch_multiple=2)
    sizes = [len(two_devices[index][0]) for index in range(len(two_devices))]
    assert sizes == [4, 4] and two_devices[1][2]["age"].tolist() == [1, 1, 1, 0]  # 3 faces and a weightless copy


def test_a_diverged_epoch_never_replaces_a_checkpoint(tmp_path):
    from backbone import build_model
    from callbacks import SafeCheckpoint

    model = build_model(32, 8)
    checkpoint = SafeCheckpoint(tmp_path / "last.keras")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 3.0})
    saved = (tmp_path / "last.keras").read_bytes()
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, np.float32))
    checkpoint.on_epoch_end(1, {"loss": float("nan")})
    assert (tmp_path / "last.keras").read_bytes() == saved


def test_fine_tuning_split_keeps_people_of_earlier_held_out_images_held_out(tmp_path):
    from train import split_like

    table = people_table(people=40, photos_per_person=5).assign(content_hash=lambda t: "h" + t["path"],
                                                                root=str(tmp_path))
    earlier = table[table.index % 5 == 0][["path"]].assign(
        split=np.where(np.arange(40) % 4 == 0, "test", "train"))  # the earlier run saw photo 0 of each person
    earlier.loc[earlier.index[1], "split"] = "test"
    earlier.to_csv(tmp_path / "split.csv", index=False)
    splits = split_like(table, str(tmp_path / "split.csv"), seed=1)
    people = {name: set(part["group"]) for name, part in splits.items()}
    assert not (people["train"] & people["test"] or people["train"] & people["val"] or people["val"] & people["test"])
    trained = set(earlier.loc[earlier["split"] == "train", "path"])
    assert trained <= set(splits["train"]["path"]) and not trained & set(splits["test"]["path"])


def test_a_run_resumes_only_with_the_settings_it_started_with(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    synthetic_table(root, count=30)
    argv = ["--cache", str(root / "cache.csv"), "--root", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--image-size", "32", "--width", "8", "--batch-size", "16"]
    assert train.main(argv) == 0
    with pytest.raises(SystemExit):
        train.run_cli(lambda: train.main([*argv[:-8], "--epochs", "2", "--image-size", "32", "--width", "8",
                                          "--batch-size", "16", "--context", "1.3", "--resume"]))
    assert "started with --context 1.0" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "run" / "log.csv")["epoch"].tolist() == [0]  # nothing trained


def test_a_failed_start_leaves_a_folder_that_can_start_again(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    synthetic_table(root, count=30)
    argv = ["--cache", str(root / "cache.csv"), "--root", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--image-size", "32", "--width", "8", "--batch-size", "16"]
    (tmp_path / "junk.keras").write_text("not a model")
    with pytest.raises(train.UserError, match="cannot load --init"):
        train.main([*argv, "--init", str(tmp_path / "junk.keras")])
    assert train.main(argv) == 0  # the same folder, now a finished run
    with pytest.raises(train.UserError, match="already holds a run"):
        train.main(argv)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(train.UserError, match="holds other files"):
        train.main([*argv[:5], str(tmp_path / "notes"), *argv[6:]])


def test_split_like_refuses_unknown_split_names_and_ageless_training_is_refused(tmp_path):
    from train import split_like

    table = people_table(people=10).assign(content_hash=lambda t: "h" + t["path"], root=str(tmp_path))
    table[["path"]].assign(split="TEST").to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(train.UserError, match="TEST"):
        split_like(table, str(tmp_path / "split.csv"), seed=1)
    root = tmp_path / "data"
    root.mkdir()
    cache = synthetic_table(root, count=20).assign(age=np.nan)
    build_cache.write_cache(cache, root / "genders.csv")
    with pytest.raises(train.UserError, match="has an age"):
        train.main(["--cache", str(root / "genders.csv"), "--root", str(root), "--out", str(tmp_path / "run"),
                    "--epochs", "1", "--image-size", "32", "--width", "8"])


def test_an_empty_cache_among_several_is_named(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    synthetic_table(root, count=10)
    (root / "empty.csv").write_text((root / "cache.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(train.UserError, match="no rows in .*empty.csv"):
        train.main(["--cache", str(root / "cache.csv"), str(root / "empty.csv"), "--root", str(root),
                    "--source-weights", "1", "1", "--out", str(tmp_path / "run"), "--epochs", "1"])
