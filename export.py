"""Export a trained model.keras to ONNX for predict.py's TensorFlow-free inference path.

    python export.py runs/utk/model.keras        # writes runs/utk/model.onnx and checks it agrees

Needs the TensorFlow backend (tf2onnx); the check compares ONNX Runtime with Keras on random faces.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distribute import float32_model
from model_card import embed_in_onnx, read_card
from utils import UserError, atomic_path, require_packages, run_cli

AGREEMENT_TOLERANCE = 1e-4


def export_onnx(model_path: str | Path) -> Path:
    import keras
    import onnxruntime

    import backbone  # noqa: F401  registers the custom loss and metric for loading

    if keras.backend.backend() != "tensorflow":
        raise UserError("ONNX export needs KERAS_BACKEND=tensorflow")
    model_path = Path(model_path)
    card = read_card(model_path)  # the ONNX file carries it, so prediction needs nothing beside it
    size = card["input"]["size"]
    try:
        model = float32_model(keras.models.load_model(model_path, compile=False))  # never a float16 graph
    except Exception as error:
        raise UserError(f"cannot load {model_path}: {str(error).splitlines()[0][:200]}") from None
    if sorted(model.output_names) != ["age", "gender"] or tuple(model.input_shape[1:]) != (size, size, 3):
        raise UserError(f"{model_path} is not an age/gender model of input {size}x{size} (its card's size)")
    if not all(np.isfinite(keras.ops.convert_to_numpy(weight)).all() for weight in model.weights):
        raise UserError(f"{model_path} holds NaN or infinite weights (its training diverged): nothing exported")
    faces = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    expected = model.predict_on_batch(faces)  # also builds the model, which export needs
    onnx_path = model_path.with_suffix(".onnx")
    with atomic_path(onnx_path) as temp_path:
        model.export(str(temp_path), format="onnx", verbose=False)
        session = onnxruntime.InferenceSession(str(temp_path), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: faces})))
        for name in ("age", "gender"):
            difference = float(np.abs(got[name] - np.asarray(expected[name])).max())
            if difference > AGREEMENT_TOLERANCE:
                raise UserError(f"ONNX output '{name}' differs from Keras by {difference:.2g}")
        embed_in_onnx(temp_path, card)
    print(f"exported {onnx_path} (agrees with Keras to {AGREEMENT_TOLERANCE})")
    return onnx_path


def main(argv=None) -> int:
    require_packages("export.py", "keras", "onnx")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model.keras written by train.py")
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        raise UserError(f"{args.model}: no such model file")
    export_onnx(args.model)
    return 0


if __name__ == "__main__":
    run_cli(main)
