"""Measure a trained model on labelled faces: age MAE, CS@5, age-band accuracy and gender accuracy,
overall, per data source, and with --groups per age band x gender and per race.

    python evaluate.py --model runs/utk/model.keras --cache data/utkface.csv --root data
    python evaluate.py --model runs/mix/model.keras --cache data/utkface.csv data/lfw.csv --root data --groups
    python evaluate.py --model models/default/model.onnx --cache data/lfw.csv --root data --split all --json

Rows: --split test (the default) takes the rows train.py held out, listed in split.csv beside the
model; test figures are for reporting, never for choosing a model or its settings (use val for that).
--split all scores every row, for a cache the model never saw. Several caches are scored together and
reported per source (the cache's `source` column, else its file name); --root gives one folder for
all caches or one per cache, in the same order.

Each row's face is framed as the model card says and the model's outputs are averaged with its
mirror image's, as predict.py does. A row counts for age only if it has an age and for gender only if
it has a gender (LFW has gender only); unreadable images are counted and skipped. A .onnx model runs
on ONNX Runtime, like predict.py; a .keras model needs Keras. The realistic check is real photos: LFW
people held out by identity (gender, adults, news photos) next to UTKFace's test split by age band.

Writes pred_vs_true.png and error_by_age.png (age MAE by age band, gender accuracy by age band x
gender, one row per source) into --out.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from generator import (AGE_BANDS, add_source_arguments, age_band, check_source_arguments, frame_row,
                       load_sources)
from model_card import read_card
from utils import HelpFormatter, UserError, atomic_path, finite_json, positive_int, run_cli

SPLITS = ["test", "val", "train", "all"]
NO_AGE, NO_GENDER = "age unknown", "gender unknown"
RACES = ["White", "Black", "Asian", "Indian", "Others"]  # UTKFace's race codes 0..4
CS_YEARS = 5  # CS@5: the share of faces whose age is off by at most 5 years


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="model.keras (model.json beside it) or model.onnx")
    add_source_arguments(parser, "cache.csv files to score")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="rows of the model's split.csv to score; all: every row of the caches")
    parser.add_argument("--groups", action="store_true",
                        help="also report per age band, age band x gender and race (where a source has race)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="faces per model call (each is run with its mirror image too)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="threads decoding images")
    parser.add_argument("--out", help="folder for the plots (default: the model's folder)")
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    return args


# --- the model ----------------------------------------------------------------------------------

def load_model(model_path: str | Path) -> tuple[Callable[[np.ndarray], dict], dict]:
    """(a function from framed BGR crops to the model's outputs {"age", "gender"}, the model card)
    for a .keras model with its model.json, or a .onnx model carrying its card (run by ONNX Runtime)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UserError(f"{model_path}: no such model file")
    if model_path.suffix == ".onnx":
        from predict import AgeGenderPredictor

        predictor = AgeGenderPredictor(model_path, detector="none")
        run, card, output_names = predictor.run_model, predictor.card, predictor.output_names
    elif model_path.suffix == ".keras":
        card = read_card(model_path)
        model = load_keras_model(model_path)
        run, output_names = keras_runner(model), model.output_names
    else:
        raise UserError(f"{model_path}: not a model (give a .keras or .onnx file)")
    if not {"age", "gender"} <= set(output_names):
        raise UserError(f"{model_path}: outputs {', '.join(output_names)}, not the 'age' and 'gender' of an age and "
                        "gender model")
    return run, card


def load_keras_model(model_path: Path):
    import keras

    import backbone  # noqa: F401  registers the custom loss and metric for loading

    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as error:
        raise UserError(f"cannot load {model_path}: {str(error).splitlines()[0][:200]}") from None


def keras_runner(model) -> Callable[[np.ndarray], dict]:
    def run(crops: np.ndarray) -> dict:
        # a plain call: under a distribution strategy (train.py's per-epoch validation) predict_on_batch
        # returns each replica's copy of the batch
        outputs = model(crops.astype(np.float32), training=False)
        return {name: np.asarray(value) for name, value in outputs.items()}

    return run


def predict_table(run: Callable[[np.ndarray], dict], table: pd.DataFrame, root: str | Path, size: int,
                  framing: dict | None = None, batch_size: int = 128, workers: int = 2) -> pd.DataFrame:
    """Predicted age (years) and P(male) for every row of a cache table, with the table's index; NaN
    for rows whose image is missing or unreadable. Each face's outputs are averaged with its mirror
    image's (predict.mirror_average). Images are decoded by a thread pool, a chunk ahead of the model."""
    from tqdm import tqdm

    from generator import frame_row
    from predict import mirror_average

    root = Path(root)
    records = table.to_dict("records")
    predictions = np.full((len(records), 2), np.nan)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(records), desc="evaluate", unit="face") as progress:
        def submit(start: int) -> list:
            return [pool.submit(frame_row, record, root, size, framing=framing)
                    for record in records[start:start + batch_size]]

        pending = submit(0)
        for start in range(0, len(records), batch_size):
            crops = [future.result() for future in pending]
            pending = submit(start + batch_size)  # OpenCV decodes without the GIL while the model runs
            readable = [position for position, crop in enumerate(crops) if crop is not None]
            if readable:
                outputs = mirror_average(run, np.stack([crops[position] for position in readable]))
                rows = start + np.array(readable)
                predictions[rows, 0] = outputs["age"] @ np.arange(outputs["age"].shape[1])
                predictions[rows, 1] = outputs["gender"][:, 0]
            progress.update(len(crops))
    return pd.DataFrame(predictions, index=table.index, columns=["predicted_age", "male_probability"])


# --- metrics ------------------------------------------------------------------------------------

def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def face_metrics(age_true, age_pred, gender_true, male_prob) -> dict:
    """Every figure for a set of faces. NaN marks a missing label or an unreadable face's prediction.

    n: faces with a prediction; n_age / n_gender: of those, faces with an age / a gender, over which
    age_mae, cs5, band_exact, band_within_1 / gender_accuracy are taken. A predicted age is rounded to
    whole years for its band. female_accuracy, male_accuracy: gender accuracy among true females, males.
    A figure over no faces is NaN (null in JSON).
    """
    age_true, age_pred, gender_true, male_prob = (np.asarray(values, np.float64).ravel()
                                                  for values in (age_true, age_pred, gender_true, male_prob))
    has_age = ~np.isnan(age_true) & ~np.isnan(age_pred)
    age_error = np.abs(age_pred[has_age] - age_true[has_age])
    band_gap = np.abs(age_band(np.floor(age_pred[has_age] + 0.5)) - age_band(age_true[has_age]))
    has_gender = ~np.isnan(gender_true) & ~np.isnan(male_prob)
    is_male = gender_true[has_gender] >= 0.5
    right = (male_prob[has_gender] >= 0.5) == is_male
    return {"n": int((~np.isnan(age_pred)).sum()), "age_mae": _mean(age_error), "cs5": _mean(age_error <= CS_YEARS),
            "gender_accuracy": _mean(right), "n_age": int(has_age.sum()), "n_gender": int(has_gender.sum()),
            "band_exact": _mean(band_gap == 0), "band_within_1": _mean(band_gap <= 1),
            "female_accuracy": _mean(right[~is_male]), "male_accuracy": _mean(right[is_male])}


def table_metrics(scored: pd.DataFrame) -> dict:
    """face_metrics of cache rows joined with predict_table's columns."""
    return face_metrics(scored["age"], scored["predicted_age"], scored["gender"], scored["male_probability"])


def group_labels(scored: pd.DataFrame) -> dict[str, tuple[pd.Series, list[str]]]:
    """For each grouping, each row's group and the groups in report order."""
    age = scored["age"].to_numpy(np.float64)
    band = pd.Series(np.where(np.isnan(age), NO_AGE, np.array(AGE_BANDS)[age_band(np.nan_to_num(age))]),
                     index=scored.index)
    gender = scored["gender"].map({0: "female", 1: "male"}).fillna(NO_GENDER)
    band_order = [*AGE_BANDS, NO_AGE]
    groupings = {"age band": (band, band_order),
                 "age band x gender": (band + " " + gender,
                                       [f"{b} {g}" for b in band_order for g in ("female", "male", NO_GENDER)])}
    if "race" in scored:
        race = scored["race"].map(dict(enumerate(RACES)))  # rows without a race belong to no race group
        groupings["race"] = (race, RACES)
    return groupings


def group_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Per source: all its faces, then each age band, age band x true gender and race group that has a
    scored face, one row each (columns source, by, group and face_metrics')."""
    rows = []
    for source, part in scored.groupby("source", sort=False):
        rows.append({"source": source, "by": "all", "group": "all", **table_metrics(part)})
        for by, (labels, order) in group_labels(part).items():
            for group in order:
                members = part[labels == group]
                if members["predicted_age"].notna().any():
                    rows.append({"source": source, "by": by, "group": group, **table_metrics(members)})
    return pd.DataFrame(rows)


# --- data ---------------------------------------------------------------------------------------

ALL_HINT = "use --split all for a cache the model was not trained on"


def read_split(model_path: Path, split: str, hint: str = ALL_HINT) -> set[str] | None:
    """The paths split.csv (beside the model) puts in `split`; None for --split all. hint: what to do
    when split.csv is missing or names none of a cache's rows."""
    if split == "all":
        return None
    split_path = model_path.with_name("split.csv")
    if not split_path.is_file():
        raise UserError(f"{split_path} not found: {hint}")
    try:
        assignment = pd.read_csv(split_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{split_path} is not a readable CSV: {str(error).splitlines()[0]}") from None
    if not {"path", "split"} <= set(assignment.columns):
        raise UserError(f"{split_path} lacks a path or split column")
    return set(assignment.loc[assignment["split"] == split, "path"])


def sources_in_split(caches: list[str], roots: list[str], split_paths: set[str] | None, split: str,
                     hint: str = ALL_HINT) -> list[tuple[pd.DataFrame, Path]]:
    """(rows to score, their root) per cache, each row with a `source`: its own, else the cache's name."""
    loaded = []
    for cache, table in zip(caches, load_sources(caches, roots)):
        if split_paths is not None:
            table = table[table["path"].isin(split_paths)]
        if table.empty:
            raise UserError(f"no rows of {cache} are in the '{split}' split" + (f" ({hint})" if split != "all" else ""))
        loaded.append((table, Path(table["root"].iloc[0])))
    return loaded


# --- reports ------------------------------------------------------------------------------------

def format_table(frame: pd.DataFrame) -> str:
    columns = {"n": "n", "n_age": "n age", "age_mae": "MAE", "cs5": "CS@5", "band_exact": "band",
               "band_within_1": "band+-1", "n_gender": "n gender", "gender_accuracy": "gender acc",
               "female_accuracy": "female", "male_accuracy": "male"}
    shown = frame[[c for c in frame.columns if c not in columns] + list(columns)].rename(columns=columns)
    formats = {name: "{:.2f}".format if name == "MAE" else "{:.3f}".format
               for name in ("MAE", "CS@5", "band", "band+-1", "gender acc", "female", "male")}
    return shown.to_string(index=False, na_rep="-", formatters=formats)


def plot_results(scored: pd.DataFrame, groups: pd.DataFrame, out_dir: Path) -> None:
    """pred_vs_true.png (faces with an age) and error_by_age.png (per source: MAE by true age band,
    gender accuracy by age band x true gender)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    for source, part in scored.dropna(subset=["age", "predicted_age"]).groupby("source", sort=False):
        axis.scatter(part["age"], part["predicted_age"], s=4, alpha=0.3, label=source)
    axis.plot([0, 100], [0, 100], color="black", linewidth=1)
    axis.set(xlabel="true age (years)", ylabel="predicted age (years)", title="predicted vs true age",
             xlim=(0, 100), ylim=(0, 100))
    if axis.get_legend_handles_labels()[0]:
        axis.legend(markerscale=3)
    _save(figure, out_dir / "pred_vs_true.png")

    sources = groups["source"].unique()
    figure, axes = plt.subplots(len(sources), 2, figsize=(13, 4 * len(sources)), squeeze=False)
    for (age_axis, gender_axis), source in zip(axes, sources):
        part = groups[groups["source"] == source]
        bands = part[(part["by"] == "age band") & (part["n_age"] > 0)]
        age_axis.bar(bands["group"], bands["age_mae"])
        if bands.empty:  # a gender-only source such as LFW
            age_axis.set(xticks=[], yticks=[])
            age_axis.text(0.5, 0.5, "no faces with an age", ha="center", transform=age_axis.transAxes)
        age_axis.set(title=f"{source}: age error by true age", xlabel="true age (years)", ylabel="age MAE (years)")
        accuracy_of = part[part["by"] == "age band x gender"].set_index("group")["gender_accuracy"]
        band_names = [b for b in [*AGE_BANDS, NO_AGE] if f"{b} female" in accuracy_of or f"{b} male" in accuracy_of]
        for offset, gender in ((-0.2, "female"), (0.2, "male")):
            accuracy = [accuracy_of.get(f"{b} {gender}", np.nan) for b in band_names]
            gender_axis.bar(np.arange(len(band_names)) + offset, accuracy, width=0.4, label=f"true {gender}")
        gender_axis.set_xticks(np.arange(len(band_names)), band_names)
        gender_axis.set(title=f"{source}: gender accuracy by age and true gender", xlabel="true age (years)",
                        ylabel="gender accuracy", ylim=(0, 1.2), yticks=np.linspace(0, 1, 6))
        gender_axis.legend(loc="upper center", ncols=2)  # above the bars, which end at 1
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
    out_dir = Path(args.out or model_path.parent)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: give a folder for the plots")
    run, card = load_model(model_path)
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # unreadable images are counted below
    sources = sources_in_split(args.cache, args.root, read_split(model_path, args.split), args.split)
    if args.split == "test":
        print("note: test split: report, don't tune (choose models and settings on --split val)", file=sys.stderr)
    scored = pd.concat([table.join(predict_table(run, table, root, card["input"]["size"], framing=card["framing"],
                                                 batch_size=args.batch_size, workers=args.workers))
                        for table, root in sources], ignore_index=True)
    unreadable = scored.loc[scored["predicted_age"].isna(), "path"].tolist()
    if len(unreadable) == len(scored):
        raise UserError(f"none of the {len(scored)} images could be read (e.g. {unreadable[0]}): is --root right?")
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable images, e.g. {unreadable[0]}", file=sys.stderr)
    groups = group_table(scored)
    plot_results(scored, groups, out_dir)
    overall = table_metrics(scored)
    per_source = groups[groups["by"] == "all"].drop(columns=["by", "group"])
    if args.json:
        document = {**overall, "split": args.split, "unreadable": len(unreadable),
                    "sources": {row.pop("source"): row for row in per_source.to_dict("records")}}
        if args.groups:
            document["groups"] = groups[groups["by"] != "all"].to_dict("records")
        print(finite_json(document))
        return 0
    print(f"faces scored: {overall['n']} of {len(scored)} ({len(unreadable)} unreadable), split: {args.split}")
    print(format_table(pd.concat([pd.DataFrame([{"source": "all", **overall}]), per_source])
                       if len(per_source) > 1 else per_source))
    if args.groups:
        print()
        print(format_table(groups[groups["by"] != "all"]))
    print(f"plots: {out_dir / 'pred_vs_true.png'}, {out_dir / 'error_by_age.png'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
