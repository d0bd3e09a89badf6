"""The model card: what a trained model expects and how it was made, one versioned JSON document.

    card = model_card.read_card("models/default/model.onnx")   # from the ONNX file's metadata
    card["input"]["size"], card["framing"], card["detector"]["score_threshold"]

train.py writes it beside the model (model.json, for people to read) and export.py embeds it in the
ONNX file's metadata_props, so a model file carries its own card. predict.py and evaluate.py take the
input size, the framing and the detector threshold from it, never from their own constants, and the
calibration temperatures where calibrate.py has fitted them (optional: without them a model predicts
as trained).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from utils import UserError, finite_json, json_safe, write_json

FORMAT_VERSION = 2
CARD_FILE = "model.json"
ONNX_METADATA_KEY = "age_gender_card"
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 512
CALIBRATION_TEMPERATURES = ("age_temperature", "gender_temperature")  # confidence.calibrated applies them
TEMPERATURE_RANGE = (0.05, 20.0)  # calibrate.py searches here; beyond, a model's outputs would be all or nothing
# What a new model is built with unless train.py is told otherwise (here, not in backbone.py: the
# training scripts show them in --help without starting Keras).
IMAGE_SIZE = 96  # default input side in pixels: train.py's, bench.py's and the shipped model's
WIDTH = 24  # default channels of the first stage; 64 suits GPUs
AGE_BINS = 101  # ages 0..100 years: the age output's bins


def validate_card(card: Any, source: str | os.PathLike = "model card") -> dict:
    """The card itself if it has every field prediction needs, with sane values; UserError otherwise."""
    def check(condition: bool, what: str, advice: str = "re-export the model with export.py") -> None:
        if not condition:
            raise UserError(f"{source}: invalid model card ({what}); {advice}")

    check(isinstance(card, dict), "not a JSON object")
    version = card.get("format_version")
    check(version is not None, "no format_version: a card from before version 2")
    check(version == FORMAT_VERSION, f"format_version {version!r}, this code reads {FORMAT_VERSION}")
    size = card.get("input", {}).get("size") if isinstance(card.get("input"), dict) else None
    check(isinstance(size, int) and MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE and size % 4 == 0,
          f"input.size {size!r} is not a multiple of 4 in {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
    framing = card.get("framing")
    check(isinstance(framing, dict) and framing.get("method") in ("landmarks", "box"),
          "framing.method must be 'landmarks' or 'box'")
    template = framing.get("template")
    check(isinstance(template, list) and len(template) == 5
          and all(isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)
                  for point in template), "framing.template must be 5 [x, y] numbers")
    box_framing = framing.get("box_framing")
    check(isinstance(box_framing, dict) and {"yunet", "haar", "metadata"} <= set(box_framing)
          and all(isinstance(entry, dict) and _is_number(entry.get("margin")) and _is_number(entry.get("shift_y"))
                  and entry["margin"] > -0.5 for entry in box_framing.values()),
          "framing.box_framing needs margin and shift_y for yunet, haar and metadata")
    detector = card.get("detector")
    check(isinstance(detector, dict) and _is_number(detector.get("score_threshold"))
          and 0 < detector["score_threshold"] < 1, "detector.score_threshold must be a number in (0, 1)")
    if "calibration" in card:  # optional: a card without it (older models) predicts uncalibrated
        calibration = card["calibration"]
        advice = "run calibrate.py on the model again"
        check(isinstance(calibration, dict), "calibration is not an object", advice)
        for name in CALIBRATION_TEMPERATURES:
            low, high = TEMPERATURE_RANGE
            check(_is_number(calibration.get(name)) and low <= calibration[name] <= high,
                  f"calibration.{name} {calibration.get(name)!r} is not a number in {low}..{high}", advice)
    return card


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_card(text: str | bytes, source: str | os.PathLike) -> dict:
    try:
        card = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{source}: model card is not valid JSON ({error})") from None
    return validate_card(card, source)


def card_path_for(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_name(CARD_FILE)


def read_card(model_path: str | os.PathLike, onnx_session=None) -> dict:
    """The card of a model: from an ONNX file's metadata (pass its onnxruntime session if one is open),
    else from model.json beside the model (.keras files)."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        if onnx_session is None:
            onnx_session = open_onnx_session(model_path)
        text = onnx_session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if text is None:
            raise UserError(f"{model_path} carries no model card: export it again with export.py")
        return parse_card(text, model_path)
    card_path = card_path_for(model_path)
    if not card_path.is_file():
        raise UserError(f"no model card {card_path} next to {model_path}")
    try:
        return parse_card(card_path.read_bytes(), card_path)
    except OSError as error:
        raise UserError(f"cannot read model card {card_path}: {error.strerror}") from None


def open_onnx_session(model_path: str | os.PathLike):
    """An ONNX Runtime session on the CPU; UserError if the file is not a model it can load."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # Idle model threads sleep instead of spinning: the cores go to the threads decoding and framing faces
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"cannot load model {model_path}: {str(error).splitlines()[0][:200]}") from None


def write_card(model_dir: str | os.PathLike, card: dict) -> Path:
    """Validate and write model.json into model_dir (atomically)."""
    path = Path(model_dir) / CARD_FILE
    validate_card(json_safe(card), path)
    write_json(path, card)
    return path


def embed_in_onnx(onnx_path: str | os.PathLike, card: dict) -> None:
    """Put the card into the ONNX file's metadata_props (replacing any earlier one), in place."""
    import onnx

    validate_card(card, onnx_path)
    model = onnx.load(str(onnx_path))
    kept = [entry for entry in model.metadata_props if entry.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=finite_json(card))
    onnx.save(model, str(onnx_path))


def existing_onnx_file(model: str, what_to_give: str) -> Path:
    """The --model argument as a Path, refused with one line unless it names an existing .onnx file."""
    model_path = Path(model)
    if not model_path.is_file():
        raise UserError(f"{model}: no such model file")
    if model_path.suffix != ".onnx":
        raise UserError(f"{model}: give {what_to_give}")
    return model_path
