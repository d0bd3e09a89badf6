"""Measure speed on this machine: data loading, training, inference and predict.py end to end.

    python bench.py                # full run, a table
    python bench.py --quick --json # a short run, one JSON object
    python bench.py --images data/UTKFace --photo group.jpg   # predict.py's figures on real faces

Targets on a 2-core CPU at the default input size: >= 1,500 images/s from 200x200 JPEGs with two
workers, >= 20,000 images/s from the packed cache, a generator >= 5x faster than training consumes,
predict.py < 0.4 s from a cold start on one photo and >= 1,000 faces/s on a folder of aligned faces
(start-up included) with the shipped int8 model, and >= 20 photos/s on a folder of 30 12-megapixel JPEGs.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from build_cache import LANDMARK_COLUMNS
from faces import FACE_TEMPLATE
from model_card import IMAGE_SIZE, WIDTH
from utils import HelpFormatter, UserError, int_at_least, positive_int, require_packages, run_cli

if TYPE_CHECKING:  # pandas and Keras are imported where used: --help answers at once
    import pandas as pd

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images and steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--image-size", type=int_at_least(32), default=IMAGE_SIZE,
                        help="model input side, a multiple of 4")
    parser.add_argument("--width", type=positive_int, default=WIDTH, help="model width for the training figure")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="training batch size")
    parser.add_argument("--model", default=str(ROOT / "models" / "default" / "model.int8.onnx"),
                        help="ONNX model for inference (predict.py's default)")
    parser.add_argument("--images", help="a folder of aligned face images for predict.py's folder figure")
    parser.add_argument("--photo", help="a photo with faces for the cold-start figure (default: a synthetic one)")
    args = parser.parse_args(argv)
    if args.image_size % 4:
        parser.error("--image-size must be a multiple of 4")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse what predict.py would fail on, before minutes of measuring."""
    if args.photo and not Path(args.photo).is_file():
        raise UserError(f"--photo {args.photo}: no such file")
    if args.images and not Path(args.images).is_dir():
        raise UserError(f"--images {args.images}: no such folder (give a folder of aligned face images)")
    if (args.photo or args.images) and not Path(args.model).is_file():
        raise UserError(f"--model {args.model}: no such file (--photo and --images measure predict.py with it)")


def synthetic_faces(folder: Path, count: int, side: int) -> pd.DataFrame:
    """JPEG photos with a face-sized blob and template landmarks: exercises the full framing path."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 255, (side, side, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"{side}_{index}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        landmarks = (FACE_TEMPLATE * side * 0.8 + side * 0.1 + rng.normal(0, 1, (5, 2))).ravel()
        rows.append({"path": f"{side}_{index}.jpg", "age": int(rng.integers(0, 90)), "gender": int(rng.integers(0, 2)),
                     "face_x1": side * 0.1, "face_y1": side * 0.1, "face_x2": side * 0.9, "face_y2": side * 0.9,
                     "face_score": 0.9, **dict(zip(LANDMARK_COLUMNS, landmarks))})
    return pd.DataFrame(rows)


def phone_photos(folder: Path, image: np.ndarray, count: int = 30) -> Path:
    """count 4000x3000 JPEGs (12 megapixels, a phone's) made from image, each with its own sensor-like noise
    so that they decode like real photos rather than like one smooth picture."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    large = cv2.resize(image, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    for index in range(count):
        noisy = cv2.add(large, rng.integers(0, 20, large.shape, dtype=np.uint8))
        cv2.imwrite(str(folder / f"phone_{index:02d}.jpg"), noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def loader_images_per_s(dataset, workers: int = 2) -> float:
    """Batches fetched by `workers` threads, as keras.utils.PyDataset's workers fetch them."""
    dataset[0]  # warm up
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        images = sum(len(batch[0]) for batch in pool.map(dataset.__getitem__, range(len(dataset))))
    return images / (time.perf_counter() - start)


def train_images_per_s(image_size: int, width: int, batch_size: int, steps: int) -> float:
    from backbone import AgeMAE, age_distribution_loss, build_model

    model = build_model(image_size, width)
    model.compile(optimizer="adamw", loss={"age": age_distribution_loss, "gender": "binary_crossentropy"},
                  metrics={"age": [AgeMAE()]})
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size * steps, image_size, image_size, 3)).astype(np.float32)
    targets = {"age": rng.integers(0, 100, len(images)).astype(np.float32),
               "gender": rng.integers(0, 2, (len(images), 1)).astype(np.float32)}
    warm_up = slice(0, batch_size * 2)  # compile the step before timing it
    model.fit(images[warm_up], {k: v[warm_up] for k, v in targets.items()}, batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    model.fit(images, targets, batch_size=batch_size, epochs=1, verbose=0)
    return len(images) / (time.perf_counter() - start)


def onnx_faces_per_s(model_path: str, image_size: int, batch: int, repeats: int) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    faces = np.random.default_rng(0).uniform(0, 255, (batch, image_size, image_size, 3)).astype(np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: faces})
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {name: faces})
    return batch * repeats / (time.perf_counter() - start)


def predict_cli_seconds(arguments: list[str]) -> float:
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "predict.py"), *arguments, "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:  # a photo or folder predict.py cannot read: its own one-line reason
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
        raise UserError(f"predict.py {' '.join(arguments[:1])} failed, so no figure for it: {reason}")
    return elapsed


def main(argv=None) -> int:
    require_packages("bench.py", "keras", "pandas")
    args = parse_args(argv)
    check_inputs(args)
    count = 256 if args.quick else 2048
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        import pandas as pd

        from generator import FaceDataset, pack_faces

        table_200 = synthetic_faces(folder, count, 200)
        table_500 = synthetic_faces(folder, count // 4, 500)
        figures["generator_images_per_s"] = loader_images_per_s(
            FaceDataset(table_200, folder, args.image_size, 64, augment=True))
        figures["generator_500px_images_per_s"] = loader_images_per_s(
            FaceDataset(table_500, folder, args.image_size, 64, augment=True))
        packed = pack_faces(table_200, folder, args.image_size)
        many_rows = pd.concat([table_200] * 8)  # packed serving is fast: more rows for a steady figure
        figures["packed_images_per_s"] = loader_images_per_s(
            FaceDataset(many_rows, folder, args.image_size, 256, augment=True, packed=packed))
        figures["train_images_per_s"] = train_images_per_s(args.image_size, args.width, args.batch_size,
                                                           steps=4 if args.quick else 16)
        figures["generator_to_train_ratio"] = figures["generator_images_per_s"] / figures["train_images_per_s"]
        if Path(args.model).is_file():
            repeats = 20 if args.quick else 100
            figures["predict_faces_per_s_batch_1"] = onnx_faces_per_s(args.model, args.image_size, 1, repeats * 5)
            figures["predict_faces_per_s"] = onnx_faces_per_s(args.model, args.image_size, 64, repeats)
            photo = Path(args.photo) if args.photo else folder / "photo.jpg"
            if not args.photo:
                cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(folder / "500_0.jpg")), (1024, 768)))
            figures["predict_cli_cold_start_s"] = predict_cli_seconds([str(photo), "--model", args.model])
            faces_folder = Path(args.images) if args.images else folder / "aligned"
            if not args.images:
                faces_folder.mkdir()
                for path in table_200["path"]:
                    (faces_folder / path).write_bytes((folder / path).read_bytes())
            faces = sum(1 for p in faces_folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            folder_seconds = predict_cli_seconds([str(faces_folder), "--detector", "none", "--model", args.model])
            figures["predict_cli_folder_faces_per_s"] = faces / folder_seconds
            phones = phone_photos(folder / "phone", cv2.imread(str(photo)))  # YuNet on each, start-up included
            figures["predict_cli_phone_photos_per_s"] = 30 / predict_cli_seconds([str(phones), "--model", args.model])
    figures["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({name: round(value, 3) for name, value in figures.items()}))
    else:
        for name, value in figures.items():
            print(f"{name:34} {value:12,.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
