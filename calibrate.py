"""Make a trained model's confidence mean what it says: one temperature for its gender output and one
for its age distribution, fitted on the validation split and written into its model card.

    python calibrate.py --model models/default/model.int8.onnx --cache data/utkface.csv data/lfw.csv --root data
    python calibrate.py --model runs/NAME/model.int8.onnx --cache data/utkface.csv data/lfw.csv data/wiki.csv \\
        --root data --dry-run          # the fit and the figures only; nothing written

The faces are the validation rows of split.csv beside the model. Each is framed as the card says and
its outputs are averaged with its mirror image's, as predict.py does; a temperature then divides the
gender logit and the log age probabilities (confidence.calibrated). The gender temperature minimises
the negative log-likelihood of the true genders. The age temperature makes the reported ranges keep
their promise: it minimises the squared gaps between 0.68 and how often the 68% range (predict.py's
age_range) holds the true age, and between 0.95 and the 95% range's share. (The likelihood's optimum
leaves the 68% range covering about 0.75 of true ages: a range of whole years, both ends included,
holds more than its 68%.) Every source weighs the same whatever its size, so that no source (thousands
of LFW news photos, say) outvotes the others. Temperature scaling never changes the reported gender
nor the most likely age; it moves the mean age a little, so the age temperature is the best one that
raises no source's age MAE by more than MAX_MAE_INCREASE years. Temperatures are tried on a grid over
model_card.TEMPERATURE_RANGE, then on a finer one around the best.

Printed per source, before -> after: gender ECE over confidence bins 0.5-0.6-0.7-0.8-0.9-0.95-1.0, how
often the central 68% (predict.py's age_range) and 95% age ranges hold the true age, age MAE and
gender accuracy. The temperatures and these figures go into the card ("calibration") of model.json
and of every ONNX file beside the model that carries the same card (model.onnx and model.int8.onnx):
each file is rewritten through a temporary file with only its card replaced, and nothing is written
if anything fails. Run it after quantize.py (a model quantized later inherits the float model's
calibration), and again after any change to the model; it always fits from the raw outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from build_cache import add_source_arguments, check_source_arguments
from confidence import COVERAGE_MASSES, age_range, calibrated, expected_age, range_coverage, scale_age, scale_gender
from evaluate import load_model, model_outputs, predictions_frame, read_split, sources_in_split, table_metrics
from faces import quiet_opencv
from model_card import (CARD_FILE, TEMPERATURE_RANGE, embed_in_onnx, existing_onnx_file, parse_card, read_card,
                        write_card)
from utils import HelpFormatter, UserError, atomic_path, file_sha256, positive_int, require_packages, run_cli

if TYPE_CHECKING:
    import pandas as pd

MAX_MAE_INCREASE = 0.05  # years: the age temperature may not make any source's age MAE worse than this
MIN_FACES = 100  # validation faces with a gender, and with an age, needed to fit each temperature
LOG_FLOOR = 1e-12  # probabilities are floored here inside the log-likelihood: one face cannot weigh infinitely
COARSE_STEPS = 40  # temperatures tried across model_card.TEMPERATURE_RANGE (16% apart), then ...
FINE_STEPS = 20  # ... this many across two coarse steps around the best (1.5% apart)
FIGURES = {"n_gender": "faces with a gender", "gender_ece": "gender ECE", "gender_accuracy": "gender accuracy",
           "n_age": "faces with an age", "age_mae": "age MAE", "range68_coverage": "68% range covers",
           "range95_coverage": "95% range covers"}  # evaluate.table_metrics' figures kept in the card
SPLIT_HINT = ("calibrate.py fits on the validation split of split.csv: give the model.onnx or model.int8.onnx of "
              "a train.py run, its split.csv beside it, and the caches it trained on")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True,
                        help="the exported model to fit on (model.int8.onnx: what predict.py runs), "
                             "split.csv beside it")
    add_source_arguments(parser, "the caches the model was trained on (their validation rows are used)")
    parser.add_argument("--dry-run", action="store_true", help="fit and print the figures, write nothing")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="faces per model call (each is run with its mirror image too)")
    parser.add_argument("--workers", type=positive_int, default=2, help="threads decoding images")
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    return args


# --- fitting ------------------------------------------------------------------------------------

def search_temperature(loss: Callable[[float], tuple[float, bool]]) -> tuple[float, float]:
    """(the temperature of least loss among the allowed ones, the one of least loss whatever it is), where
    loss(temperature) -> (loss, allowed): over COARSE_STEPS even steps of log(temperature) across
    model_card.TEMPERATURE_RANGE and 1.0 (no change, always allowed), then FINE_STEPS around the best."""
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    step = (high - low) / COARSE_STEPS
    tried: dict[float, tuple[float, bool]] = {}  # log(temperature) -> loss(temperature)

    def least(log_temperatures: np.ndarray, only_allowed: bool) -> float:
        candidates = sorted(set(np.clip(log_temperatures, low, high).tolist()))
        for value in candidates:
            if value not in tried:
                tried[value] = loss(math.exp(value))
        return min((value for value in candidates if tried[value][1] or not only_allowed),
                   key=lambda value: tried[value][0])

    found = []
    for only_allowed in (True, False):
        centre = least(np.append(np.linspace(low, high, COARSE_STEPS + 1), 0.0), only_allowed)
        found.append(math.exp(least(centre + np.linspace(-step, step, FINE_STEPS + 1), only_allowed)))
    return found[0], found[1]


def source_weights(sources: np.ndarray) -> np.ndarray:
    """A weight per face, summing to 1, under which every source weighs the same whatever its size."""
    names, index, counts = np.unique(sources, return_inverse=True, return_counts=True)
    return 1 / (len(names) * counts[index])


def gender_loss(male_probs: np.ndarray, is_male: np.ndarray, sources: np.ndarray
                ) -> Callable[[float], tuple[float, bool]]:
    """The negative log-likelihood of the true genders under a temperature, every source weighing the same."""
    weights = source_weights(sources)

    def loss(temperature: float) -> tuple[float, bool]:
        p_male = np.clip(scale_gender(male_probs, temperature), LOG_FLOOR, 1 - LOG_FLOOR)
        return float(-(weights * np.where(is_male, np.log(p_male), np.log1p(-p_male))).sum()), True

    return loss


def age_loss(age_probs: np.ndarray, true_age: np.ndarray, sources: np.ndarray) -> Callable[[float], tuple[float, bool]]:
    """How far the age ranges miss their promise under a temperature: the squared gaps between each range's
    mass in COVERAGE_MASSES and the share of true ages it holds, averaged over the sources; and whether
    every source's age MAE stays within MAX_MAE_INCREASE years of its uncalibrated MAE."""
    members = [sources == name for name in np.unique(sources)]

    def maes(distributions: np.ndarray) -> np.ndarray:
        errors = np.abs(expected_age(distributions) - true_age)
        return np.array([errors[member].mean() for member in members])

    mae_before = maes(age_probs)

    def loss(temperature: float) -> tuple[float, bool]:
        scaled = scale_age(age_probs, temperature)
        ranges = [age_range(scaled, mass) for mass in COVERAGE_MASSES]
        gaps = [sum((range_coverage(low[member], high[member], true_age[member]) - mass) ** 2
                    for (low, high), mass in zip(ranges, COVERAGE_MASSES)) for member in members]
        return float(np.mean(gaps)), bool(np.all(maes(scaled) <= mae_before + MAX_MAE_INCREASE))

    return loss


def fit(faces: pd.DataFrame, age_probs: np.ndarray, male_probs: np.ndarray) -> dict:
    """{"gender_temperature", "age_temperature", "age_temperature_best_fit"} fitted on the faces (rows with
    age, gender and source; NaN for a missing label) and their raw mirror-averaged outputs. The age
    temperature is the best one that keeps every MAE within MAX_MAE_INCREASE; the best fit ignores that."""
    has_gender, has_age = faces["gender"].notna().to_numpy(), faces["age"].notna().to_numpy()
    if has_gender.sum() < MIN_FACES or has_age.sum() < MIN_FACES:
        raise UserError(f"the validation split holds {has_gender.sum()} readable faces with a gender and "
                        f"{has_age.sum()} with an age; calibrate.py needs {MIN_FACES} of each")
    sources = faces["source"].astype(str).to_numpy()
    is_male = faces["gender"].to_numpy(np.float64)[has_gender] >= 0.5
    gender_temperature, _ = search_temperature(gender_loss(male_probs[has_gender], is_male, sources[has_gender]))
    age_temperature, best_fit = search_temperature(
        age_loss(age_probs[has_age], faces["age"].to_numpy(np.float64)[has_age], sources[has_age]))
    return {"gender_temperature": gender_temperature, "age_temperature": age_temperature,
            "age_temperature_best_fit": best_fit}


def figures_by_source(faces: pd.DataFrame, age_probs: np.ndarray, male_probs: np.ndarray,
                      temperatures: dict) -> dict[str, dict[str, dict]]:
    """Per source, {"before": ..., "after": ...}: evaluate.table_metrics' FIGURES uncalibrated and calibrated."""
    figures = {}
    for source, part in faces.groupby("source", sort=False):
        rows = part.index.to_numpy()  # faces' index counts its rows, as the outputs do
        figures[str(source)] = {
            stage: {key: value for key, value in table_metrics(part.join(predictions_frame(
                *calibrated(age_probs[rows], male_probs[rows], calibration), part.index))).items() if key in FIGURES}
            for stage, calibration in (("before", None), ("after", temperatures))}
    return figures


def describe(figures: dict[str, dict[str, dict]]) -> str:
    """The before -> after table, one line per source."""
    shown = [key for key in FIGURES if not key.startswith("n_")]
    lines = [f"{'source':12} {'faces':>6}  " + "  ".join(f"{FIGURES[key]:>18}" for key in shown)]
    for source, stages in figures.items():
        def change(key: str) -> str:
            before, after = stages["before"][key], stages["after"][key]
            digits = 2 if key == "age_mae" else 3
            return "-" if math.isnan(before) else f"{before:.{digits}f} -> {after:.{digits}f}"

        faces = max(stages["before"]["n_gender"], stages["before"]["n_age"])
        lines.append(f"{source:12} {faces:>6}  " + "  ".join(f"{change(key):>18}" for key in shown))
    return "\n".join(lines)


# --- writing ------------------------------------------------------------------------------------

def without_calibration(card: dict) -> dict:
    """The card without what differs between files of one model: its calibration and quantization."""
    return {key: value for key, value in card.items() if key not in ("calibration", "quantization")}


def files_of_model(model_path: Path, card: dict) -> list[tuple[Path, dict]]:
    """(path, its card) of every ONNX file beside model_path carrying the same model's card (model.onnx,
    model.int8.onnx), float models first, then model.json if it is that model's card too."""
    found = []
    for path in sorted(model_path.parent.glob("*.onnx")):
        try:
            own_card = card if path == model_path else read_card(path)
        except UserError:  # another network (a face detector, say) or a file without a card
            continue
        if without_calibration(own_card) == without_calibration(card):
            found.append((path, own_card))
    found.sort(key=lambda entry: "quantization" in entry[1])  # an int8 card names its float file's sha256
    json_path = model_path.with_name(CARD_FILE)
    if json_path.is_file():
        json_card = parse_card(json_path.read_bytes(), json_path)
        if without_calibration(json_card) == without_calibration(card):
            found.append((json_path, json_card))
    return found


def write_calibration(model_path: Path, card: dict, calibration: dict) -> list[Path]:
    """Put calibration into the card of every file of the model (files_of_model); returns their paths.
    All ONNX files are prepared as temporary files and renamed together at the end, so a failure
    leaves every file as it was."""
    written, new_sha256 = [], {}
    with contextlib.ExitStack() as stack:
        for path, own_card in files_of_model(model_path, card):
            updated = {**own_card, "calibration": calibration}
            if path.suffix != ".onnx":
                write_card(path.parent, updated)
                written.append(path)
                continue
            quantization = updated.get("quantization")
            if quantization and quantization.get("float_model_sha256") in new_sha256:
                # the same float network, rewritten a moment ago with the calibration in its card
                updated["quantization"] = {**quantization,
                                           "float_model_sha256": new_sha256[quantization["float_model_sha256"]]}
            temp_path = stack.enter_context(atomic_path(path))
            shutil.copyfile(path, temp_path)
            embed_in_onnx(temp_path, updated)
            new_sha256[file_sha256(path)] = file_sha256(temp_path)
            written.append(path)
    return written


def main(argv=None) -> int:
    require_packages("calibrate.py", "pandas")
    args = parse_args(argv)
    import pandas as pd  # after the arguments: --help answers at once

    model_path = existing_onnx_file(args.model, "the exported model.onnx or model.int8.onnx (export.py, quantize.py)")
    run, card = load_model(model_path)  # its run gives the raw outputs: calibration is applied after averaging
    quiet_opencv()  # unreadable images are counted below, not reported one by one
    sources = sources_in_split(args.cache, args.root, read_split(model_path, "val", SPLIT_HINT), "val", SPLIT_HINT)
    tables, age_parts, male_parts = [], [], []
    for table, root in sources:
        age_probs, male_probs = model_outputs(run, table, root, card["input"]["size"], framing=card["framing"],
                                              batch_size=args.batch_size, workers=args.workers)
        readable = ~np.isnan(male_probs)
        tables.append(table[readable])
        age_parts.append(age_probs[readable])
        male_parts.append(male_probs[readable])
    faces = pd.concat(tables, ignore_index=True)
    age_probs, male_probs = np.concatenate(age_parts), np.concatenate(male_parts)
    unreadable = sum(len(table) for table, _ in sources) - len(faces)
    if unreadable:
        print(f"warning: skipped {unreadable} unreadable validation images", file=sys.stderr)
    temperatures = fit(faces, age_probs, male_probs)
    figures = figures_by_source(faces, age_probs, male_probs, temperatures)
    print(describe(figures))
    best_fit = temperatures["age_temperature_best_fit"]
    held_back = (f" (best fit {best_fit:.3f}, held back: it made an age MAE worse by more than {MAX_MAE_INCREASE} "
                 "years)") if temperatures["age_temperature"] != best_fit else ""
    print(f"gender temperature {temperatures['gender_temperature']:.3f}, "
          f"age temperature {temperatures['age_temperature']:.3f}{held_back}")
    if args.dry_run:
        return 0
    calibration = {
        **temperatures,
        "method": "temperature scaling of the gender logit and of the log age probabilities, applied to the "
                  "outputs averaged over a face and its mirror image (confidence.calibrated), fitted on the "
                  "validation split with every source weighing the same: the gender temperature minimises the "
                  "negative log-likelihood, the age temperature the squared gaps between 0.68 and 0.95 and how "
                  "often the 68% and 95% age ranges hold the true age, among the temperatures that raise no "
                  f"source's age MAE by more than {MAX_MAE_INCREASE} years",
        "fitted_on": {"model": model_path.name, "split": "val", "faces": len(faces), "unreadable": unreadable},
        "figures": figures,
    }
    for path in write_calibration(model_path, card, calibration):
        print(f"wrote the calibration into {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
