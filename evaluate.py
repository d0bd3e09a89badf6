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

The figures are those predict.py reports: with the temperatures calibrate.py put in the model card
(--uncalibrated: without them). Reliability, per source: gender ECE (the reported gender's confidence
in bins 0.5-0.6-0.7-0.8-0.9-0.95-1.0, the gap between confidence and accuracy in each, weighted by its
faces), how often the central 68% age range (predict.py's age_range) and the central 95% one hold the
true age, and what predict.py --min-gender-confidence P trades: the share of faces given a gender and
the accuracy on those, for P from 0.5 (always) to 0.95.

Writes pred_vs_true.png, error_by_age.png (age MAE by age band, gender accuracy by age band x
gender, one row per source) and reliability_SOURCE.png (a reliability diagram of the gender's
confidence and the age ranges' coverage against their size, per source) into --out.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from build_cache import AGE_BANDS, add_source_arguments, age_band, check_source_arguments, frame_row, load_sources
from confidence import (AGE_RANGE_MASS, COVERAGE_MASSES, age_range, calibrated, expected_age, gender_ece,
                        range_coverage, reliability_bins)
from model_card import read_card
from utils import (HelpFormatter, UserError, atomic_path, finite_json, native_stderr_silenced, positive_int,
                   require_packages, run_cli)

if TYPE_CHECKING:  # pandas (and Keras, for .keras models) are imported where used: --help answers at once
    import keras
    import pandas as pd

    from generator import FaceDataset

SPLITS = ["test", "val", "train", "all"]
NO_AGE, NO_GENDER = "age unknown", "gender unknown"
RACES = ["White", "Black", "Asian", "Indian", "Others"]  # UTKFace's race codes 0..4
CS_YEARS = 5  # CS@5: the share of faces whose age is off by at most 5 years
AGE_BINS = 101  # the model's age distribution: 0..100 years
MIN_GENDER_CONFIDENCES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # predict.py --min-gender-confidence values reported


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
    parser.add_argument("--uncalibrated", action="store_true",
                        help="score the model's raw outputs, without the temperatures calibrate.py put in its card")
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
    with native_stderr_silenced():  # stderr is for this script's messages, not TensorFlow's start-up
        import keras

        import backbone  # noqa: F401  registers the custom loss and metric for loading

        try:
            model = keras.models.load_model(model_path, compile=False)
            model.predict_on_batch(np.zeros((1, *model.input_shape[1:]), np.float32))  # devices start here
            return model
        except Exception as error:
            raise UserError(f"cannot load {model_path}: {str(error).splitlines()[0][:200]}") from None


def keras_runner(model) -> Callable[[np.ndarray], dict]:
    def run(crops: np.ndarray) -> dict:
        # a plain call: under a distribution strategy (train.py's per-epoch validation) predict_on_batch
        # returns each replica's copy of the batch
        outputs = model(crops.astype(np.float32), training=False)
        return {name: np.asarray(value) for name, value in outputs.items()}

    return run


def model_outputs(run: Callable[[np.ndarray], dict], table: pd.DataFrame, root: str | Path, size: int,
                  framing: dict | None = None, batch_size: int = 128, workers: int = 2
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(age distributions N x 101, P(male) N) for the N rows of a cache table, in order, as the model
    gives them (uncalibrated); NaN for rows whose image is missing or unreadable. Each face's outputs
    are averaged with its mirror image's (predict.mirror_average). Images are decoded by a thread pool,
    a chunk ahead of the model."""
    from tqdm import tqdm

    from predict import mirror_average

    root = Path(root)
    records = table.to_dict("records")
    age_probs, male_probs = np.full((len(records), AGE_BINS), np.nan), np.full(len(records), np.nan)
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
                age_probs[rows], male_probs[rows] = outputs["age"], outputs["gender"][:, 0]
            progress.update(len(crops))
    return age_probs, male_probs


def predictions_frame(age_probs: np.ndarray, male_probs: np.ndarray, index: pd.Index) -> pd.DataFrame:
    """Per row: predicted_age (the distribution's mean), male_probability, and the central 68% and 95%
    age ranges as predict.py reports them (age_low, age_high; age_low_95, age_high_95), all NaN for a
    row without outputs."""
    import pandas as pd

    readable = ~np.isnan(male_probs)
    columns = {"predicted_age": expected_age(age_probs), "male_probability": male_probs}
    for mass in COVERAGE_MASSES:
        low, high = age_range(age_probs, mass)
        columns[f"age_low{range_suffix(mass)}"] = np.where(readable, low, np.nan)
        columns[f"age_high{range_suffix(mass)}"] = np.where(readable, high, np.nan)
    return pd.DataFrame(columns, index=index)


def range_suffix(mass: float) -> str:
    """"" for predict.py's range (as its CSV names age_low, age_high), else "_95" and so on."""
    return "" if mass == AGE_RANGE_MASS else f"_{round(100 * mass)}"


def predict_table(run: Callable[[np.ndarray], dict], table: pd.DataFrame, root: str | Path, size: int,
                  framing: dict | None = None, batch_size: int = 128, workers: int = 2) -> pd.DataFrame:
    """predictions_frame of model_outputs: predicted age, P(male) and age ranges for every row of a
    cache table, with the table's index (uncalibrated)."""
    return predictions_frame(*model_outputs(run, table, root, size, framing, batch_size, workers), table.index)


def held_out_metrics(model: keras.Model, dataset: FaceDataset) -> dict:
    """This script's figures over a (non-augmented) generator.FaceDataset: all its faces, and each source
    apart (train.py's model card and its choice of checkpoint)."""
    predictions = predict_table(keras_runner(model), dataset.table, dataset.root, dataset.image_size,
                                dataset.framing, dataset.batch_size)
    scored = dataset.table.join(predictions)
    return {"all": table_metrics(scored), **{name: table_metrics(part) for name, part in scored.groupby("source")}}


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
    """face_metrics and reliability_metrics of cache rows joined with predict_table's columns."""
    return {**face_metrics(scored["age"], scored["predicted_age"], scored["gender"], scored["male_probability"]),
            **reliability_metrics(scored)}


def abstention_table(scored: pd.DataFrame) -> pd.DataFrame:
    """What predict.py --min-gender-confidence P trades, per source (and all sources where there are
    several) and P in MIN_GENDER_CONFIDENCES: the share of faces with a gender that get one (answered)
    and the accuracy over those (NaN where none is answered)."""
    import pandas as pd

    has_gender = scored["gender"].notna() & scored["male_probability"].notna()
    parts = [("all", scored[has_gender])] if scored.loc[has_gender, "source"].nunique() > 1 else []
    parts += list(scored[has_gender].groupby("source", sort=False))
    rows = []
    for source, part in parts:
        male_prob = part["male_probability"].to_numpy(np.float64)
        right = (male_prob >= 0.5) == (part["gender"].to_numpy(np.float64) >= 0.5)
        # compared as predict.py reports the confidence, to 3 decimals
        confidence = np.round(np.maximum(male_prob, 1 - male_prob), 3)
        for threshold in MIN_GENDER_CONFIDENCES:
            answered = confidence >= threshold
            rows.append({"source": source, "min_gender_confidence": threshold, "answered": _mean(answered),
                         "accuracy": _mean(right[answered])})
    return pd.DataFrame(rows)


def format_abstention(abstention: pd.DataFrame) -> str:
    """One line per source: "answered / accuracy" under each --min-gender-confidence."""
    cells = abstention.assign(cell=[f"{answered:.3f} / " + ("-" if math.isnan(accuracy) else f"{accuracy:.3f}")
                                    for answered, accuracy in zip(abstention["answered"], abstention["accuracy"])])
    table = cells.pivot(index="source", columns="min_gender_confidence", values="cell")
    table = table.loc[list(dict.fromkeys(abstention["source"]))]  # sources in report order
    table.columns = [f"P={threshold:g}" for threshold in table.columns]
    return table.rename_axis(None).to_string()


def reliability_metrics(scored: pd.DataFrame) -> dict:
    """How far the reported confidence holds: gender_ece (confidence.gender_ece, over faces with a
    gender) and range68_coverage, range95_coverage: the share of faces with an age whose true age lies
    in the central 68% (predict.py's age_range) or 95% of the predicted age distribution. NaN over no faces."""
    age, gender, male_prob = (scored[column].to_numpy(np.float64) for column in ("age", "gender", "male_probability"))
    has_gender = ~np.isnan(gender) & ~np.isnan(male_prob)
    has_age = ~np.isnan(age) & ~np.isnan(male_prob)
    figures = {"gender_ece": gender_ece(male_prob[has_gender], gender[has_gender] >= 0.5)}
    for mass in COVERAGE_MASSES:
        low, high = (scored[f"{end}{range_suffix(mass)}"].to_numpy(np.float64)[has_age]
                     for end in ("age_low", "age_high"))
        figures[f"range{round(100 * mass)}_coverage"] = range_coverage(low, high, age[has_age])
    return figures


def group_labels(scored: pd.DataFrame) -> dict[str, tuple[pd.Series, list[str]]]:
    """For each grouping, each row's group and the groups in report order."""
    import pandas as pd

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
    import pandas as pd

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
    import pandas as pd

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

ACCURACY_COLUMNS = {"n": "n", "n_age": "n age", "age_mae": "MAE", "cs5": "CS@5", "band_exact": "band",
                    "band_within_1": "band+-1", "n_gender": "n gender", "gender_accuracy": "gender acc",
                    "female_accuracy": "female", "male_accuracy": "male"}
RELIABILITY_COLUMNS = {"n_gender": "n gender", "gender_ece": "gender ECE", "n_age": "n age",
                       "range68_coverage": "68% range covers", "range95_coverage": "95% range covers"}


def format_table(frame: pd.DataFrame, columns: dict[str, str] = ACCURACY_COLUMNS) -> str:
    """The rows' labels (source, by, group where present) and the metric columns named in `columns`."""
    labels = [column for column in ("source", "by", "group") if column in frame]
    shown = frame[labels + list(columns)].rename(columns=columns)
    formats = {name: "{:.2f}".format if name == "MAE" else "{:.3f}".format
               for name in shown.columns if name not in labels and not name.startswith("n")}
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


def plot_reliability(scored: pd.DataFrame, age_probs: np.ndarray, out_dir: Path) -> list[Path]:
    """reliability_SOURCE.png per source: the reported gender's accuracy against its confidence (per
    confidence bin, the ECE's bins), and how often the central range of each size holds the true age
    against that size (both on the diagonal for a model whose confidence means what it says).
    age_probs: the age distributions of scored's rows, in its order. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masses = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, AGE_RANGE_MASS, 0.8, 0.9, 0.95])
    written = []
    for source, part in scored.groupby("source", sort=False):
        figure, (gender_axis, age_axis) = plt.subplots(1, 2, figsize=(11, 4.8))
        has_gender = part["gender"].notna() & part["male_probability"].notna()
        bins = reliability_bins(part.loc[has_gender, "male_probability"], part.loc[has_gender, "gender"] >= 0.5)
        filled = [entry for entry in bins if entry["n"]]
        gender_axis.bar([entry["low"] for entry in bins], [entry["accuracy"] for entry in bins],
                        width=[entry["high"] - entry["low"] for entry in bins], align="edge", edgecolor="black",
                        alpha=0.7, label="accuracy in the bin")
        gender_axis.plot([entry["confidence"] for entry in filled], [entry["accuracy"] for entry in filled], "o",
                         color="black", label="(mean confidence, accuracy)")
        for entry in filled:
            gender_axis.text((entry["low"] + entry["high"]) / 2, 0.42, str(entry["n"]), ha="center", fontsize=8)
        gender_axis.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", label="perfect calibration")
        ece = gender_ece(part.loc[has_gender, "male_probability"], part.loc[has_gender, "gender"] >= 0.5)
        gender_axis.set(xlim=(0.5, 1), ylim=(0.4, 1.02), xlabel="confidence of the reported gender",
                        ylabel="share right", title=f"{source}: gender (ECE {ece:.3f}; faces per bin at the foot)")
        gender_axis.legend(loc="upper left", fontsize=8)
        has_age = (part["age"].notna() & part["male_probability"].notna()).to_numpy()
        rows = part.index.to_numpy()[has_age]  # scored's index counts its rows, as age_probs does
        if rows.size:
            true_age = scored["age"].to_numpy(np.float64)[rows]
            coverage = [range_coverage(*age_range(age_probs[rows], mass), true_age) for mass in masses]
            age_axis.plot(masses, coverage, "o-", label=f"{rows.size} faces with an age")
            age_axis.legend(loc="upper left", fontsize=8)
        else:  # a gender-only source such as LFW
            age_axis.text(0.5, 0.5, "no faces with an age", ha="center", transform=age_axis.transAxes)
        age_axis.plot([0, 1], [0, 1], color="grey", linestyle="--")
        age_axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="size of the central age range (68%: predict.py's range)",
                     ylabel="share of true ages inside", title=f"{source}: age range coverage")
        path = out_dir / f"reliability_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(source))}.png"
        _save(figure, path)
        written.append(path)
    return written


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as temp_path:
        figure.savefig(temp_path, dpi=100, format="png")
    plt.close(figure)


def main(argv=None) -> int:
    require_packages("evaluate.py", "pandas")
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
    import pandas as pd

    calibration = None if args.uncalibrated else card.get("calibration")  # what predict.py reports
    outputs = [calibrated(*model_outputs(run, table, root, card["input"]["size"], framing=card["framing"],
                                         batch_size=args.batch_size, workers=args.workers), calibration)
               for table, root in sources]
    scored = pd.concat([table.join(predictions_frame(age_probs, male_probs, table.index))
                        for (table, _), (age_probs, male_probs) in zip(sources, outputs)], ignore_index=True)
    unreadable = scored.loc[scored["predicted_age"].isna(), "path"].tolist()
    if len(unreadable) == len(scored):
        raise UserError(f"none of the {len(scored)} images could be read (e.g. {unreadable[0]}): is --root right?")
    if unreadable:
        print(f"warning: skipped {len(unreadable)} unreadable images, e.g. {unreadable[0]}", file=sys.stderr)
    groups = group_table(scored)
    plot_results(scored, groups, out_dir)
    diagrams = plot_reliability(scored, np.concatenate([age_probs for age_probs, _ in outputs]), out_dir)
    overall = table_metrics(scored)
    per_source = groups[groups["by"] == "all"].drop(columns=["by", "group"])
    if args.json:
        document = {**overall, "split": args.split, "unreadable": len(unreadable),
                    "calibrated": calibration is not None,
                    "sources": {row.pop("source"): row for row in per_source.to_dict("records")},
                    "abstention": abstention_table(scored).to_dict("records")}
        if args.groups:
            document["groups"] = groups[groups["by"] != "all"].to_dict("records")
        print(finite_json(document))
        return 0
    print(f"faces scored: {overall['n']} of {len(scored)} ({len(unreadable)} unreadable), split: {args.split}")
    summary = pd.concat([pd.DataFrame([{"source": "all", **overall}]), per_source]) if len(per_source) > 1 \
        else per_source
    print(format_table(summary))
    print("\nreliability, " + ("with the temperatures in the model card" if calibration else
                               "uncalibrated (--uncalibrated)" if card.get("calibration") else
                               "uncalibrated (the model card holds no calibration: calibrate.py fits it)"))
    print(format_table(summary, RELIABILITY_COLUMNS))
    print("\n--min-gender-confidence P: share of faces given a gender / accuracy on those")
    print(format_abstention(abstention_table(scored)))
    if args.groups:
        print()
        print(format_table(groups[groups["by"] != "all"]))
    plots = [out_dir / "pred_vs_true.png", out_dir / "error_by_age.png", *diagrams]
    print(f"plots: {', '.join(str(path) for path in plots)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
