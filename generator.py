"""Training data: a keras.utils.PyDataset of framed faces with age and gender targets.

    table = build_cache.load_cache("data/utkface.csv")
    splits = split_table(table, seed=42)                      # stratified train / val / test
    train = FaceDataset(splits["train"], "data", image_size=96, augment=True)
    packed = pack_faces(table, "data", image_size=96)         # optional one-time crop cache
    train = FaceDataset(splits["train"], "data", 96, augment=True, packed=packed)

Each face is framed by faces.frame_face, exactly as predict.py frames it. With `packed`, crops come
from a memory-mapped uint8 array (framed once with a 25% wider context) and augmentation happens on
those small crops, so loading never holds a GPU back.
"""
from __future__ import annotations

import hashlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from build_cache import BOX_COLUMNS, LANDMARK_COLUMNS
from faces import Face, frame_face, jitter_matrices, read_training_image
from utils import atomic_path

PACK_CONTEXT = 1.25  # packed crops keep 25% more around the face, room for augmentation's shifts
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def face_of_row(row) -> Face:
    """The face to frame for one cache row: landmarks if present, else its box, else the whole image."""
    landmarks = np.array([row[c] for c in LANDMARK_COLUMNS], np.float64)
    x1, y1, x2, y2 = (row[c] for c in BOX_COLUMNS)
    has_box = not np.isnan(x1)
    return Face(
        box=(x1, y1, x2 - x1, y2 - y1) if has_box else (np.nan,) * 4,
        landmarks=None if np.isnan(landmarks).any() else landmarks.reshape(5, 2),
        score=row["face_score"],
        box_source="yunet" if not np.isnan(landmarks).any() else "metadata",
    )


def frame_row(row, root: Path, size: int, jitter: np.ndarray | None = None) -> np.ndarray | None:
    """Read one cache row's image and frame its face; None if the image is missing or corrupt."""
    face = face_of_row(row)
    has_box = not np.isnan(face.box[0])
    # JPEGs decode reduced only while the face keeps at least twice the output size.
    image, factor = read_training_image(root / row["path"], max(face.box[2:]) / (2 * size) if has_box else 1)
    if image is None:
        return None
    if not has_box:  # the image is the face (an aligned set without detection): frame it whole
        height, width = image.shape[:2]
        face.box, face.box_source = (0.0, 0.0, float(width), float(height)), "yunet"
    elif factor != 1:
        face.box = tuple(v / factor for v in face.box)
        face.landmarks = None if face.landmarks is None else face.landmarks / factor
    return frame_face(image, face, size, jitter=jitter)


def age_band(age_years: np.ndarray) -> np.ndarray:
    return np.minimum(np.asarray(age_years) // 10, 8)  # decades, 80+ together


def split_table(table: pd.DataFrame, seed: int = 42) -> dict[str, pd.DataFrame]:
    """Reproducible train/val/test split, stratified by age decade and gender."""
    table = table.reset_index(drop=True)  # positions and labels agree below
    strata = age_band(table["age"]) * 2 + table["gender"].to_numpy()
    counts = pd.Series(strata).value_counts()
    strata = np.where(counts[strata].to_numpy() >= 10, strata, -1)  # tiny strata pooled so sklearn can split
    train, rest = train_test_split(table, test_size=1 - SPLIT_FRACTIONS["train"], random_state=seed, stratify=strata)
    rest_strata = strata[rest.index]
    if pd.Series(rest_strata).value_counts().min() < 2:
        rest_strata = None
    val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=rest_strata)
    return {"train": train, "val": val, "test": test}


def pack_faces(table: pd.DataFrame, root: str | Path, image_size: int, packed_path: str | Path | None = None,
               workers: int = 2) -> dict:
    """Frame every row once into a uint8 array on disk (memory-mapped); reused while the rows match."""
    root = Path(root)
    packed_size = round(image_size * PACK_CONTEXT)
    # The file name carries a hash of the rows and their faces: a rebuilt cache never reads stale crops.
    rows_hash = pd.util.hash_pandas_object(table[["path", *BOX_COLUMNS, *LANDMARK_COLUMNS]], index=False)
    key = hashlib.sha256(rows_hash.to_numpy().tobytes() + str(image_size).encode()).hexdigest()[:16]
    packed_path = Path(packed_path or root / f"packed_{image_size}_{key}.npy")
    valid_path = packed_path.with_suffix(".valid.npy")
    if packed_path.is_file() and valid_path.is_file():
        return {"images": np.load(packed_path, mmap_mode="r"), "valid": np.load(valid_path),
                "index": {p: i for i, p in enumerate(table["path"])}}
    # Framed at the packed size with the face shrunk by PACK_CONTEXT, the centre image_size pixels
    # are exactly the face as frame_face gives it at image_size.
    centre = packed_size / 2
    zoom_out = np.array([[1 / PACK_CONTEXT, 0, centre * (1 - 1 / PACK_CONTEXT)],
                         [0, 1 / PACK_CONTEXT, centre * (1 - 1 / PACK_CONTEXT)], [0, 0, 1]])
    valid = np.zeros(len(table), bool)
    records = table.to_dict("records")
    with atomic_path(packed_path) as temp_path:
        images = np.lib.format.open_memmap(temp_path, "w+", np.uint8, (len(table), packed_size, packed_size, 3))

        def pack_one(position: int) -> None:
            crop = frame_row(records[position], root, packed_size, zoom_out)
            if crop is not None:
                images[position], valid[position] = crop, True

        with ThreadPoolExecutor(workers) as pool:
            list(tqdm(pool.map(pack_one, range(len(table))), total=len(table), desc="pack faces", unit="face"))
        images.flush()
        with atomic_path(valid_path) as valid_temp_path:
            np.save(valid_temp_path, valid)
    print(f"packed {valid.sum()} faces into {packed_path} ({(~valid).sum()} unreadable)")
    return pack_faces(table, root, image_size, packed_path)


class FaceDataset(keras.utils.PyDataset):
    """Batches of (BGR uint8 images, {"age": years, "gender": 1 = male}) from cache rows; the model scales."""

    def __init__(self, table: pd.DataFrame, root: str | Path, image_size: int, batch_size: int = 64,
                 augment: bool = False, seed: int = 42, packed: dict | None = None, workers: int = 2, **kwargs):
        super().__init__(workers=workers, use_multiprocessing=False, **kwargs)
        self.table, self.root = table.reset_index(drop=True), Path(root)
        self.records = self.table.to_dict("records")  # plain dicts: far cheaper per sample than DataFrame rows
        self.image_size, self.batch_size, self.augment, self.packed = image_size, batch_size, augment, packed
        self.seed, self.epoch = seed, 0
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.table)) if augment else np.arange(len(self.table))
        self.unreadable: set[str] = set()
        self.lock = threading.Lock()
        self.ages = self.table["age"].to_numpy(np.float32)
        self.genders = self.table["gender"].to_numpy(np.float32)
        if packed is not None:
            self.packed_rows = np.array([packed["index"][p] for p in self.table["path"]])

    def __len__(self) -> int:
        return int(np.ceil(len(self.table) / self.batch_size))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        if self.augment:
            self.order = self.rng.permutation(len(self.table))

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])  # reproducible whatever the worker order
        jitters = jitter_matrices(rng, len(rows), self.image_size) if self.augment else [None] * len(rows)
        if self.packed is not None:
            images, ok = self._from_packed(rows, jitters)
        else:
            images, ok = self._from_files(rows, jitters)
        if self.augment:
            self._photometric(images, rng)
        rows = rows[ok]
        return images, {"age": self.ages[rows], "gender": self.genders[rows, None]}

    def _from_files(self, rows: np.ndarray, jitters):
        images = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        ok = np.zeros(len(rows), bool)
        for position, (row, jitter) in enumerate(zip(rows, jitters)):
            crop = frame_row(self.records[row], self.root, self.image_size, jitter)
            if crop is None:
                self._report_unreadable(self.records[row]["path"])
            else:
                images[position], ok[position] = crop, True
        return images[ok], ok

    def _from_packed(self, rows: np.ndarray, jitters):
        packed_rows = self.packed_rows[rows]
        ok = self.packed["valid"][packed_rows]
        for row in rows[~ok]:
            self._report_unreadable(self.records[row]["path"])
        crops = self.packed["images"][packed_rows[ok]]
        margin = (crops.shape[1] - self.image_size) // 2
        if not self.augment:
            return crops[:, margin:margin + self.image_size, margin:margin + self.image_size], ok
        images = np.empty((len(crops), self.image_size, self.image_size, 3), np.uint8)
        to_centre = np.array([[1, 0, -margin], [0, 1, -margin], [0, 0, 1]])
        matrices = (np.asarray(jitters)[ok] @ to_centre)[:, :2]
        for crop, matrix, image in zip(crops, matrices, images):
            cv2.warpAffine(crop, matrix, (self.image_size, self.image_size), dst=image,
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return images, ok

    def _photometric(self, images: np.ndarray, rng: np.random.Generator) -> None:
        """Random contrast (about mid-grey) and brightness, in place, saturating at 0 and 255."""
        contrast = rng.uniform(0.75, 1.25, len(images))
        shift = rng.uniform(-25, 25, len(images)) + 128 * (1 - contrast)
        for image, alpha, beta in zip(images, contrast, shift):
            cv2.convertScaleAbs(image, dst=image, alpha=alpha, beta=beta)

    def _report_unreadable(self, path: str) -> None:
        with self.lock:
            if not self.unreadable:
                print(f"warning: skipping unreadable image {path} (and any others: counted at the end)",
                      file=sys.stderr)
            self.unreadable.add(path)
