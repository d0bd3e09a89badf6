"""Measure a trained model: age MAE, CS@5, gender accuracy, MAE per decade, and two plots.

    python evaluate.py --model runs/utk/model.keras --cache data/utkface.csv --root data
    python evaluate.py --model runs/utk/model.keras --cache data/utkface.csv --root data --split all --json
    python evaluate.py --model runs/utk/model.keras --cache data/utkface.csv --root data --wild

--split test (the default) uses the rows train.py held out, from split.csv next to the model.
--wild measures the way predict.py sees photos: each face (an aligned chip) is placed at a random
scale and position on a larger cluttered background, found with YuNet, framed and predicted by
model.onnx; faces the detector misses count as wrong gender and are left out of the age figures.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from generator import FaceDataset
from model_card import read_card
from utils import UserError, atomic_path, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.keras written by train.py (model.onnx for --wild)")
    parser.add_argument("--cache", required=True, help="cache.csv with the faces to score")
    parser.add_argument("--root", default="imdb", help="folder the cache's paths are relative to (default: imdb)")
    parser.add_argument("--split", choices=["test", "val", "train", "all"], default="test",
                        help="which rows of the model's split.csv (default: test)")
    parser.add_argument("--batch-size", type=int, default=128, help="faces per batch (default: 128)")
    parser.add_argument("--out", help="folder for the plots (default: the model's folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: n, age_mae, cs5, gender_accuracy")
    parser.add_argument("--wild", action="store_true", help="compose in-the-wild photos and run predict.py's path")
    parser.add_argument("--seed", type=int, default=0, help="seed for the --wild compositions (default: 0)")
    return parser.parse_args(argv)


def summary_metrics(age_true: np.ndarray, age_pred: np.ndarray, gender_true: np.ndarray, male_prob: np.ndarray) -> dict:
    age_error = np.abs(age_pred - age_true)
    return {"n": int(len(age_true)), "age_mae": float(age_error.mean()), "cs5": float((age_error <= 5).mean()),
            "gender_accuracy": float(((male_prob >= 0.5) == (gender_true >= 0.5)).mean())}


def mae_by_decade(age_true: np.ndarray, age_pred: np.ndarray) -> pd.DataFrame:
    decade = (np.minimum(age_true, 99) // 10 * 10).astype(int)
    frame = pd.DataFrame({"decade": decade, "abs_error": np.abs(age_pred - age_true)})
    table = frame.groupby("decade")["abs_error"].agg(["count", "mean"]).rename(columns={"mean": "age_mae"})
    table.index = [f"{d}-{d + 9}" for d in table.index]
    return table


def predict_dataset(model, dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true ages, predicted ages, true genders, P(male)) over a dataset, skipping unreadable images.
    Like predict.py, each face's outputs are averaged with its mirror image's."""
    from backbone import AGE_BINS
    from predict import mirror_average

    def run(images):
        return {name: np.asarray(value) for name, value in model.predict_on_batch(images).items()}

    ages, predicted, genders, male_probs = [], [], [], []
    for index in range(len(dataset)):
        images, targets, _ = dataset[index]
        if not len(images):
            continue
        outputs = mirror_average(run, images)
        predicted.append(outputs["age"] @ np.arange(AGE_BINS))
        male_probs.append(outputs["gender"][:, 0])
        ages.append(targets["age"])
        genders.append(targets["gender"][:, 0])
    return tuple(np.concatenate(parts) for parts in (ages, predicted, genders, male_probs))


def compose_wild_photo(face: np.ndarray, rng: np.random.Generator, side: int = 640) -> np.ndarray:
    """The face pasted at a random scale (15-45% of the photo's side) and position onto clutter."""
    import cv2

    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)  # smooth colour fields
    photo = cv2.resize(coarse, (side, side * 3 // 4), interpolation=cv2.INTER_CUBIC)
    photo = cv2.add(photo, rng.integers(0, 40, photo.shape, dtype=np.uint8))  # sensor-like grain
    for _ in range(6):  # a few objects in the scene
        x, y = int(rng.integers(0, photo.shape[1])), int(rng.integers(0, photo.shape[0]))
        cv2.rectangle(photo, (x, y), (x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))),
                      tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    face_side = int(side * rng.uniform(0.15, 0.45))
    x = int(rng.integers(0, photo.shape[1] - face_side))
    y = int(rng.integers(0, photo.shape[0] - face_side))
    photo[y:y + face_side, x:x + face_side] = cv2.resize(face, (face_side, face_side), interpolation=cv2.INTER_AREA)
    return photo


def predict_in_the_wild(model_path: Path, table: pd.DataFrame, root: Path, seed: int):
    """(true ages, true genders, predicted ages, P(male)) with NaN where no face was detected."""
    import cv2
    from tqdm import tqdm

    from predict import AgeGenderPredictor

    predictor = AgeGenderPredictor(model_path.with_suffix(".onnx"), detector="yunet")
    rng = np.random.default_rng(seed)
    predicted_ages, male_probs = [], []
    for path in tqdm(table["path"], desc="in the wild", unit="photo"):
        faces = predictor.predict(compose_wild_photo(cv2.imread(str(root / path)), rng))
        face = faces[0] if faces else None  # the largest face
        predicted_ages.append(face["age"] if face else np.nan)
        male_probs.append(np.nan if face is None else
                          face["gender_confidence"] if face["gender"] == "male" else 1 - face["gender_confidence"])
    return (table["age"].to_numpy(float), table["gender"].to_numpy(float),
            np.array(predicted_ages), np.array(male_probs))


def wild_metrics(age_true, gender_true, age_pred, male_prob) -> dict:
    found = ~np.isnan(age_pred)
    metrics = summary_metrics(age_true[found], age_pred[found], gender_true[found], male_prob[found])
    # A missed face counts as a wrong gender: the share right among found faces times the share found.
    gender_accuracy = metrics["gender_accuracy"] * float(found.mean())
    return {**metrics, "gender_accuracy": gender_accuracy, "n": int(len(found)), "detected": float(found.mean())}


def plot_errors(age_true: np.ndarray, age_pred: np.ndarray, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.scatter(age_true, age_pred, s=4, alpha=0.3)
    axis.plot([0, 100], [0, 100], color="black", linewidth=1)
    axis.set(xlabel="true age (years)", ylabel="predicted age (years)", title="predicted vs true age",
             xlim=(0, 100), ylim=(0, 100))
    _save(figure, out_dir / "pred_vs_true.png")
    table = mae_by_decade(age_true, age_pred)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar(table.index, table["age_mae"])
    axis.set(xlabel="true age", ylabel="age MAE (years)", title="age error by decade")
    _save(figure, out_dir / "error_by_age.png")


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as temp_path:
        figure.savefig(temp_path, dpi=100, format="png")
    plt.close(figure)


def load_keras_model(model_path: Path):
    import keras

    import backbone  # noqa: F401  registers the custom loss and metric for loading

    try:
        return keras.models.load_model(model_path)
    except Exception as error:
        raise UserError(f"cannot load {model_path}: {str(error).splitlines()[0]}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    model_path = Path(args.model)
    if not model_path.is_file():
        raise UserError(f"{model_path}: no such model file")
    from build_cache import load_cache

    card = read_card(model_path)
    table = load_cache(args.cache)
    if args.split != "all":
        split_path = model_path.with_name("split.csv")
        if not split_path.is_file():
            raise UserError(f"{split_path} not found: use --split all for a cache the model was not trained on")
        split = pd.read_csv(split_path)
        table = table[table["path"].isin(split.loc[split["split"] == args.split, "path"])]
    if table.empty:
        raise UserError(f"no rows of {args.cache} are in the '{args.split}' split")
    if args.wild:
        age_true, gender_true, age_pred, male_prob = predict_in_the_wild(model_path, table, Path(args.root), args.seed)
        metrics = wild_metrics(age_true, gender_true, age_pred, male_prob)
        found = ~np.isnan(age_pred)
        age_true, age_pred = age_true[found], age_pred[found]
        note = f"in the wild, faces detected in {metrics['detected']:.1%} of photos"
    else:
        dataset = FaceDataset(table, args.root, card["input"]["size"], args.batch_size)
        age_true, age_pred, gender_true, male_prob = predict_dataset(load_keras_model(model_path), dataset)
        metrics = summary_metrics(age_true, age_pred, gender_true, male_prob)
        note = f"{len(dataset.unreadable)} unreadable skipped"
    plot_errors(age_true, age_pred, Path(args.out or model_path.parent))
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"faces: {metrics['n']} ({note})")
    print(f"age MAE: {metrics['age_mae']:.2f} years   CS@5: {metrics['cs5']:.3f}   "
          f"gender accuracy: {metrics['gender_accuracy']:.3f}")
    print(mae_by_decade(age_true, age_pred).round(2).to_string())
    return 0


if __name__ == "__main__":
    run_cli(main)
