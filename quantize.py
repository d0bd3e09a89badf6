"""Quantize an exported model.onnx to 8-bit integers: the network runs about 2.5x faster on a CPU.

    python quantize.py --model models/default/model.onnx --cache data/utkface.csv data/lfw.csv --root data

Writes model.int8.onnx beside the model (or --out). The ranges of the network's activations are
calibrated on faces of the training split (split.csv beside the model) and their mirror images, framed
as the model card says. Weights are stored per output channel in 7 bits, which keeps CPUs without
AVX-512 VNNI from saturating. The convolutions and residual additions run in int8; the first
convolution (raw pixels in) and the output layers stay float: they cost little, and the age
distribution keeps its fine probabilities (its quantiles give the age range).

The int8 model is then compared with the float one on faces of the validation split: age MAE and
gender accuracy of each, how far the predicted ages move and how often the genders agree. The
figures go into the card embedded in the new file ("quantization"), and nothing is written if the
int8 model strays too far (a broken calibration).
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from build_cache import add_source_arguments, check_source_arguments, frame_row
from evaluate import face_metrics, load_model, predict_table, read_split, sources_in_split
from faces import quiet_opencv
from model_card import embed_in_onnx, existing_onnx_file
from utils import (HelpFormatter, UserError, atomic_path, check_output_file, file_sha256, int_at_least,
                   require_packages, run_cli)

if TYPE_CHECKING:  # pandas is imported where used: --help answers at once
    import pandas as pd

CALIBRATION_FACES = 512  # training faces (each also mirrored) whose activations set the int8 ranges
CHECK_FACES = 2000  # validation faces on which the int8 model is compared with the float one
MIN_CALIBRATION_FACES, MIN_CHECK_FACES = 32, 100  # fewer cannot set the ranges, or judge them
MAX_MEAN_AGE_CHANGE = 1.0  # years; beyond this (or below the agreement below) the quantization failed
MIN_GENDER_AGREEMENT = 0.97
SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="the float model.onnx (export.py), split.csv beside it")
    add_source_arguments(parser, "the caches the model was trained on")
    parser.add_argument("--out", help="the int8 model to write (default: model.int8.onnx beside --model)")
    parser.add_argument("--calibration-faces", type=int_at_least(MIN_CALIBRATION_FACES), default=CALIBRATION_FACES,
                        help="training faces for calibration")
    parser.add_argument("--check-faces", type=int_at_least(MIN_CHECK_FACES), default=CHECK_FACES,
                        help="validation faces for the comparison with the float model")
    args = parser.parse_args(argv)
    check_source_arguments(parser, args)
    return args


SPLIT_HINT = ("quantize.py calibrates on the training split and checks on the validation split of split.csv: "
              "give the model.onnx of a train.py run, its split.csv beside it, and the caches it trained on")


def rows_of_split(model_path: Path, caches: list[str], roots: list[str], split: str, count: int) -> pd.DataFrame:
    """At most `count` rows of one split, drawn from every cache in proportion to its rows there."""
    import pandas as pd

    sources = sources_in_split(caches, roots, read_split(model_path, split, SPLIT_HINT), split, SPLIT_HINT)
    table = pd.concat([table for table, _ in sources], ignore_index=True)
    return table.sample(min(count, len(table)), random_state=SEED)


def framed_faces(table: pd.DataFrame, card: dict) -> np.ndarray:
    """The rows' faces as the model sees them (each row's own root), unreadable images left out."""
    size = card["input"]["size"]
    crops = [frame_row(record, "", size, framing=card["framing"]) for record in table.to_dict("records")]
    crops = [crop for crop in crops if crop is not None]
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


def check_enough_faces(split: str, readable: int, rows: int, needed: int) -> None:
    if readable >= needed:
        return
    if readable < rows:
        raise UserError(f"only {readable} of {rows} {split} images could be read; quantize.py needs {needed}: "
                        "is --root right?")
    raise UserError(f"the {split} split holds only {rows} faces; quantize.py needs {needed}")


def quantize_onnx(float_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization of float_path into int8_path, calibrated on the crops and their mirrors."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self):
            batches = [calibration[start:start + 64] for start in range(0, len(calibration), 64)]
            self.feeds = iter([{input_name: faces.astype(np.float32)}
                               for batch in batches for faces in (batch, batch[:, :, ::-1])])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"  # graph folded and shapes inferred for the quantizer
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        input_name = graph.input[0].name
        first_convolution = next(node.name for node in graph.node if node.op_type == "Conv")
        quantize_static(str(prepared), str(int8_path), Calibration(), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["Conv", "Relu", "Add", "GlobalAveragePool"],
                        nodes_to_exclude=[first_convolution],
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)


def predicted(run, card: dict, table: pd.DataFrame) -> pd.DataFrame:
    """evaluate.predict_table of a loaded model (evaluate.load_model) on the rows (NaN for unreadable images)."""
    return predict_table(run, table, "", card["input"]["size"], framing=card["framing"])


def compare(table: pd.DataFrame, float_pred: pd.DataFrame, int8_pred: pd.DataFrame) -> dict:
    """Validation figures of both models on the same faces, and how far int8 moves the predictions."""
    if int8_pred.isna().any(axis=None):
        raise UserError("the int8 model gives no number (NaN) for faces the float model scores: nothing written")
    figures = {"validation_faces": len(table),
               "mean_age_change_years": float(np.abs(float_pred["predicted_age"] - int8_pred["predicted_age"]).mean()),
               "gender_agreement": float(((float_pred["male_probability"] >= 0.5)
                                          == (int8_pred["male_probability"] >= 0.5)).mean())}
    for name, prediction in (("float", float_pred), ("int8", int8_pred)):
        metrics = face_metrics(table["age"], prediction["predicted_age"], table["gender"],
                               prediction["male_probability"])
        figures[f"{name}_age_mae"], figures[f"{name}_gender_accuracy"] = metrics["age_mae"], metrics["gender_accuracy"]
    return figures


def describe(figures: dict) -> str:
    def both(name: str, digits: int) -> str:
        return " -> ".join("-" if math.isnan(figures[f"{model}_{name}"]) else f"{figures[f'{model}_{name}']:.{digits}f}"
                           for model in ("float", "int8"))

    return (f"on {figures['validation_faces']} validation faces, float -> int8: age MAE {both('age_mae', 3)}, "
            f"gender accuracy {both('gender_accuracy', 4)}; ages move {figures['mean_age_change_years']:.3f} years "
            f"on average, genders agree on {figures['gender_agreement']:.4f}")


def main(argv=None) -> int:
    require_packages("quantize.py", "pandas", "onnx")
    args = parse_args(argv)
    float_path = existing_onnx_file(args.model, "the exported model.onnx (export.py writes it from model.keras)")
    run_float, card = load_model(float_path)
    if "quantization" in card:
        raise UserError(f"{args.model} is already quantized: give the float model.onnx")
    split_path = float_path.with_name("split.csv")
    int8_path = check_output_file(args.out or float_path.with_name(f"{float_path.stem}.int8.onnx"),
                                  [float_path, split_path, *args.cache])
    if int8_path.exists():
        raise UserError(f"{int8_path} exists: delete it first or give another --out")
    quiet_opencv()  # unreadable images are left out and counted, not reported line by line
    check_rows = rows_of_split(float_path, args.cache, args.root, "val", args.check_faces)
    float_pred = predicted(run_float, card, check_rows)  # first: unreadable validation images fail early
    readable = float_pred.notna().all(axis=1)
    check_enough_faces("validation", int(readable.sum()), len(check_rows), MIN_CHECK_FACES)
    calibration_rows = rows_of_split(float_path, args.cache, args.root, "train", args.calibration_faces)
    calibration = framed_faces(calibration_rows, card)
    check_enough_faces("training", len(calibration), len(calibration_rows), MIN_CALIBRATION_FACES)
    with atomic_path(int8_path) as temp_path:
        print(f"calibrating on {len(calibration)} training faces and their mirror images")
        quantize_onnx(float_path, temp_path, calibration)
        embed_in_onnx(temp_path, card)  # the card first: the comparison loads the model as predict.py does
        int8_pred = predicted(*load_model(temp_path), check_rows[readable])
        figures = compare(check_rows[readable], float_pred[readable], int8_pred)
        print(describe(figures))
        if (figures["mean_age_change_years"] > MAX_MEAN_AGE_CHANGE
                or figures["gender_agreement"] < MIN_GENDER_AGREEMENT):
            raise UserError(f"the int8 model strays too far from the float one (ages move more than "
                            f"{MAX_MEAN_AGE_CHANGE} years or genders agree on less than {MIN_GENDER_AGREEMENT}): "
                            "nothing written")
        quantization = {"weights": "int8, per output channel, 7-bit range", "activations": "uint8",
                        "kept_float": "first convolution, output layers", "calibration_faces": len(calibration),
                        "float_model_sha256": file_sha256(float_path), **figures}
        embed_in_onnx(temp_path, {**card, "quantization": quantization})
    print(f"wrote {int8_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
