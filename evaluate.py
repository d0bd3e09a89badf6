"""Measure a trained model: age MAE, CS@5, gender accuracy, MAE per decade, and two plots.

    python evaluate.py --model runs/utk/model.keras --cache data/utkface.csv --root data
    python evaluate.py --model runs/utk/model.keras --cache data/utkface.csv --root data --split all --json

--split test (the default) uses the rows train.py held out, from split.csv next to the model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from utils import UserError, atomic_path, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.keras written by train.py")
    parser.add_argument("--cache", required=True, help="cache.csv with the faces to score")
    parser.add_argument("--root", default="imdb", help="folder the cache's paths are relative to (default: imdb)")
    parser.add_argument("--split", choices=["test", "val", "train", "all"], default="test",
                        help="which rows of the model's split.csv (default: test)")
    parser.add_argument("--batch-size", type=int, default=128, help="faces per batch (default: 128)")
    parser.add_argument("--out", help="folder for the plots (default: the model's folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: n, age_mae, cs5, gender_accuracy")
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
    """(true ages, predicted ages, true genders, P(male)) over a dataset, skipping unreadable images."""
    from backbone import AGE_BINS

    ages, predicted, genders, male_probs = [], [], [], []
    for index in range(len(dataset)):
        images, targets = dataset[index]
        if not len(images):
            continue
        outputs = model.predict_on_batch(images)
        predicted.append(np.asarray(outputs["age"]) @ np.arange(AGE_BINS))
        male_probs.append(np.asarray(outputs["gender"])[:, 0])
        ages.append(targets["age"])
        genders.append(targets["gender"][:, 0])
    return tuple(np.concatenate(parts) for parts in (ages, predicted, genders, male_probs))


def plot_errors(age_true: np.ndarray, age_pred: np.ndarray, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.scatter(age_true, age_pred, s=4, alpha=0.3)
    axis.plot([0, 100], [0, 100], color="black", linewidth=1)
    axis.set(xlabel="true age (years)", ylabel="predicted age (years)", title="predicted vs true age", xlim=(0, 100), ylim=(0, 100))
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


def main(argv=None) -> int:
    args = parse_args(argv)
    model_path = Path(args.model)
    if not model_path.is_file():
        raise UserError(f"{model_path}: no such model file")
    import keras

    import backbone  # noqa: F401  registers the custom loss and metric for loading
    from build_cache import load_cache
    from generator import FaceDataset
    from utils import read_model_card

    card = read_model_card(model_path)
    table = load_cache(args.cache)
    if args.split != "all":
        split_path = model_path.with_name("split.csv")
        if not split_path.is_file():
            raise UserError(f"{split_path} not found: use --split all for a cache the model was not trained on")
        split = pd.read_csv(split_path)
        table = table[table["path"].isin(split.loc[split["split"] == args.split, "path"])]
    if table.empty:
        raise UserError(f"no rows of {args.cache} are in the '{args.split}' split")
    try:
        model = keras.models.load_model(model_path)
    except Exception as error:
        raise UserError(f"cannot load {model_path}: {str(error).splitlines()[0]}") from None
    dataset = FaceDataset(table, args.root, card["input"]["size"], args.batch_size)
    age_true, age_pred, gender_true, male_prob = predict_dataset(model, dataset)
    metrics = summary_metrics(age_true, age_pred, gender_true, male_prob)
    plot_errors(age_true, age_pred, Path(args.out or model_path.parent))
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"faces: {metrics['n']} ({len(dataset.unreadable)} unreadable skipped)")
    print(f"age MAE: {metrics['age_mae']:.2f} years   CS@5: {metrics['cs5']:.3f}   "
          f"gender accuracy: {metrics['gender_accuracy']:.3f}")
    print(mae_by_decade(age_true, age_pred).round(2).to_string())
    return 0


if __name__ == "__main__":
    run_cli(main)
