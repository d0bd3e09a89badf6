"""Training data: a keras.utils.PyDataset of framed faces with age and gender targets.

    table = build_cache.load_cache("data/utkface.csv")
    splits = split_table(table, seed=42)                      # train / val / test, by person or by image
    train = FaceDataset(splits["train"], "data", image_size=96, augment=True)
    packed = pack_faces(table, "data", image_size=96)         # optional one-time crop cache
    train = FaceDataset(splits["train"], "data", 96, augment=True, packed=packed)

Each face is framed by faces.frame_face, exactly as predict.py frames it. With `packed`, crops come
from a memory-mapped uint8 array (framed once on a larger canvas) and augmentation works on those
small crops, so loading never holds a GPU back.

A row may lack a label (LFW has no ages): its target is 0 and its sample weight for that output is 0,
so the loss and the metrics ignore it. Several sources (a `source` column, a `root` column for each
row's folder) are sampled with weights: each epoch draws rows so that each source takes its share.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from backbone import AGE_BINS, gaussian_age_targets
from build_cache import BOX_COLUMNS, LANDMARK_COLUMNS, age_band, face_of_row, frame_row, teacher_outputs_path
from confidence import expected_age
from faces import DEFAULT_FRAMING, framing_matrix, jitter_matrices
from utils import UserError, atomic_path, file_sha256

PACK_MARGIN = 0.25  # packed crops keep this share of the side around the face on each side: jitter, box views
PACK_FORMAT = 3  # bump when the way crops are packed changes: older packed files are not reused
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
BOX_FRAMING_SHARE = 0.2  # share of training faces framed by their box (no landmarks): Haar and metadata paths
# Share of training faces each photo-like degradation hits: low resolution, blur, JPEG, noise, colour cast,
# greyscale, an occluding patch (degrade_like_photos draws them independently, in this order).
DEGRADATION_SHARES = np.array([0.25, 0.15, 0.3, 0.15, 0.3, 0.08, 0.12])


def load_teacher(caches: list[str], tables: list[pd.DataFrame]) -> np.ndarray:
    """The teacher's outputs (teacher.py) for every row of the caches, as one array of rows (AGE_BINS age
    probabilities, then P(male); NaN where the teacher could not read the image). Each table gains a
    `teacher_row` column, its rows' places in that array."""
    outputs, offset = [], 0
    for cache, table in zip(caches, tables):
        path = teacher_outputs_path(cache)
        rerun = f"run python teacher.py --cache {cache} --root ROOT"
        if not path.is_file():
            raise UserError(f"{cache} has no teacher outputs ({path}): {rerun}")
        try:
            with np.load(path) as stored:
                made_for, paths = str(stored["cache_sha256"]), stored["path"]
                rows = np.column_stack([stored["age_probs"], stored["p_male"]]).astype(np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UserError(f"{path} is not teacher.py's output ({str(error).splitlines()[0]}): {rerun}") from None
        if made_for != file_sha256(cache) or rows.shape != (len(table), AGE_BINS + 1) \
                or not np.array_equal(paths, table["path"].to_numpy(str)):
            raise UserError(f"{path} was made for another version of {cache}: {rerun}")
        table["teacher_row"] = np.arange(offset, offset + len(table))
        outputs.append(rows)
        offset += len(table)
    return np.concatenate(outputs)


def group_keys(table: pd.DataFrame) -> pd.Series:
    """What must never be split across train and test: the person where the source names one, else
    the image's content (duplicates travel together), else its path."""
    source = table["source"].fillna("") if "source" in table else pd.Series("", index=table.index)
    key = table["path"].astype(str)
    for column in ("content_hash", "group"):  # later columns win: identity beats content
        if column in table:
            known = table[column].notna() & (table[column].astype(str) != "")
            key = key.where(~known, column + ":" + table[column].astype(str))
    return source.astype(str) + "|" + key


def split_table(table: pd.DataFrame, seed: int = 42, fractions: dict | None = None) -> dict[str, pd.DataFrame]:
    """Reproducible train/val/test split by group (person or image content), stratified by source,
    age band and gender. Every fraction is honoured up to whole groups; any table of 3 or more groups
    gets non-empty val and test splits."""
    fractions = fractions or SPLIT_FRACTIONS
    names = list(fractions)
    bounds = np.cumsum([fractions[name] for name in names])
    table = table.reset_index(drop=True)
    gender = table["gender"].fillna(-1).to_numpy()
    source = table["source"].fillna("").astype(str) if "source" in table else ""
    stratum = source + ":" + pd.Series(age_band(table["age"]) * 3 + gender, index=table.index).astype(str)
    keys = group_keys(table)
    groups = pd.DataFrame({"key": keys, "stratum": stratum}).groupby("key", sort=True)
    group_frame = groups.agg(stratum=("stratum", "first"), rows=("stratum", "size"))
    rng = np.random.default_rng(seed)
    assignment = pd.Series(0, index=group_frame.index)
    for _, members in group_frame.groupby("stratum", sort=True):
        members = members.iloc[rng.permutation(len(members))]
        cumulative = members["rows"].cumsum() / members["rows"].sum()
        midpoints = cumulative - members["rows"] / members["rows"].sum() / 2
        assignment[members.index] = np.minimum(np.searchsorted(bounds, midpoints.to_numpy(), side="right"),
                                               len(names) - 1)
    for position in range(1, len(names)):  # tiny tables: take a group from train for an empty split
        if not (assignment == position).any() and (assignment == 0).sum() > 1:
            assignment[rng.choice(assignment.index[assignment == 0])] = position
    row_split = keys.map(assignment).to_numpy()
    return {name: table[row_split == position] for position, name in enumerate(names)}


def packed_size_for(image_size: int) -> int:
    return image_size + 2 * int(np.ceil(image_size * PACK_MARGIN))


def pack_key(table: pd.DataFrame, image_size: int, framing: dict) -> str:
    """A hash of everything that shapes a packed crop: rows, faces, framing, sizes and the format."""
    columns = [c for c in ("root", "path", "box_source", *BOX_COLUMNS, *LANDMARK_COLUMNS) if c in table]
    rows_hash = pd.util.hash_pandas_object(table[columns], index=False).to_numpy().tobytes()
    settings = json.dumps({"size": image_size, "packed": packed_size_for(image_size), "framing": framing,
                           "format": PACK_FORMAT}, sort_keys=True).encode()
    return hashlib.sha256(rows_hash + settings).hexdigest()[:16]


def pack_faces(table: pd.DataFrame, root: str | Path, image_size: int, framing: dict | None = None,
               packed_path: str | Path | None = None, workers: int = 2) -> dict:
    """Frame every row once into a uint8 array on disk (memory-mapped); reused while nothing changed.

    Each crop is the face framed at image_size, centred on a canvas PACK_MARGIN wider on each side:
    its centre is exactly what frame_face gives at image_size."""
    root, framing = Path(root), framing or DEFAULT_FRAMING
    packed_size = packed_size_for(image_size)
    packed_path = Path(packed_path or root / f"packed_{image_size}_{pack_key(table, image_size, framing)}.npy")
    valid_path = packed_path.with_suffix(".valid.npy")
    index = {row_id: i for i, row_id in enumerate(_row_ids(table))}
    if packed_path.is_file() and valid_path.is_file():
        return {"images": np.load(packed_path, mmap_mode="r"), "valid": np.load(valid_path), "index": index}
    valid = np.zeros(len(table), bool)
    records = table.to_dict("records")
    with atomic_path(packed_path) as temp_path:
        images = np.lib.format.open_memmap(temp_path, "w+", np.uint8, (len(table), packed_size, packed_size, 3))

        def pack_one(position: int) -> None:
            crop = frame_row(records[position], root, image_size, framing, canvas=packed_size)
            if crop is not None:
                images[position], valid[position] = crop, True

        with ThreadPoolExecutor(workers) as pool:
            list(tqdm(pool.map(pack_one, range(len(table))), total=len(table), desc="pack faces", unit="face"))
        images.flush()
        del images
        with atomic_path(valid_path) as valid_temp_path:
            np.save(valid_temp_path, valid)
    print(f"packed {valid.sum()} faces into {packed_path} ({(~valid).sum()} unreadable)")
    return pack_faces(table, root, image_size, framing, packed_path)


def _row_ids(table: pd.DataFrame) -> list[str]:
    """A key per row naming its image and its face (an image may hold several faces)."""
    columns = [c for c in ("root", "path", *BOX_COLUMNS, "right_eye_x", "right_eye_y") if c in table]
    return ["|".join(map(str, values)) for values in table[columns].itertuples(index=False)]


class FaceDataset(keras.utils.PyDataset):
    """Batches of (BGR uint8 images, {"age": years, "gender": 1 = male}, {"age": w, "gender": w}) from cache
    rows; a weight is 0 where the label is unknown. The model scales pixels itself."""

    def __init__(self, table: pd.DataFrame, root: str | Path, image_size: int, batch_size: int = 64,
                 augment: bool = False, seed: int = 42, packed: dict | None = None, workers: int = 2,
                 framing: dict | None = None, epoch: int = 0, source_weights: dict[str, float] | None = None,
                 batch_multiple: int = 1, teacher: np.ndarray | None = None, teacher_weight: float = 0.5,
                 **kwargs):
        super().__init__(workers=workers, use_multiprocessing=False, **kwargs)
        self.table, self.root = table.reset_index(drop=True), Path(root)
        if len(self.table) < batch_multiple:
            raise UserError(f"a split has {len(self.table)} faces, fewer than the {batch_multiple} devices that "
                            "share each batch: use more data or fewer devices")
        self.records = self.table.to_dict("records")  # plain dicts: far cheaper per sample than DataFrame rows
        self.image_size, self.batch_size, self.augment, self.packed = image_size, batch_size, augment, packed
        self.framing = framing or DEFAULT_FRAMING
        self.box_framing = {**self.framing, "method": "box"}
        self.batch_multiple = batch_multiple  # data-parallel JAX splits each batch evenly over its devices
        self.seed, self.epoch = seed, epoch
        self.sampling = sampling_probabilities(self.table, source_weights) if augment else None
        self.order = self._order_for_epoch()
        self.unreadable: set[str] = set()
        self.lock = threading.Lock()
        ages = self.table["age"].to_numpy(np.float32)
        genders = self.table["gender"].to_numpy(np.float32)
        self.ages, self.age_known = np.nan_to_num(ages), (~np.isnan(ages)).astype(np.float32)
        self.genders, self.gender_known = np.nan_to_num(genders), (~np.isnan(genders)).astype(np.float32)
        self.teacher, self.teacher_weight = teacher, teacher_weight
        if teacher is not None:
            self.teacher_rows = self.table["teacher_row"].to_numpy(int)
        if packed is not None:
            self.packed_rows = np.array([packed["index"][row_id] for row_id in _row_ids(self.table)])
            self.box_relative = self._box_relative_matrices() if augment else None

    def __len__(self) -> int:
        return int(np.ceil(len(self.table) / self.batch_size))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order_for_epoch()

    def _order_for_epoch(self) -> np.ndarray:
        """Training rows drawn afresh for each epoch, from (seed, epoch) alone: a resumed run at epoch k
        sees what an uninterrupted run sees at epoch k. Evaluation keeps the table's order."""
        if self.sampling is None:
            return np.arange(len(self.table))
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.choice(len(self.table), size=len(self.table), replace=True, p=self.sampling)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])  # reproducible whatever the worker order
        jitters = jitter_matrices(rng, len(rows), self.image_size, scale=0.12, shift=0.07, degrees=15) \
            if self.augment else [None] * len(rows)
        # Some faces are framed by their box instead of their landmarks, as Haar and metadata boxes are.
        by_box = rng.random(len(rows)) < BOX_FRAMING_SHARE if self.augment else np.zeros(len(rows), bool)
        if self.packed is not None:
            images, ok = self._from_packed(rows, jitters, by_box)
        else:
            images, ok = self._from_files(rows, jitters, by_box)
        if self.augment:
            degrade_like_photos(images, rng)
        rows = rows[ok]
        counted = np.ones(len(rows), np.float32)
        missing = -len(rows) % self.batch_multiple if len(rows) else self.batch_multiple
        if missing:  # never an empty batch, and devices share a batch equally: repeat a face, weighing nothing
            filler_image, filler_row = (images[0], rows[0]) if len(rows) else self._readable_face()
            images = np.concatenate([images, np.repeat(filler_image[None], missing, axis=0)])
            rows = np.concatenate([rows, np.full(missing, filler_row)])
            counted = np.concatenate([counted, np.zeros(missing, np.float32)])
        if self.teacher is not None:
            targets, weights = self._teacher_targets(rows)
        else:
            targets = {"age": self.ages[rows], "gender": self.genders[rows, None]}
            weights = {"age": self.age_known[rows], "gender": self.gender_known[rows]}
        return images, targets, {name: weight * counted for name, weight in weights.items()}

    def _teacher_targets(self, rows: np.ndarray) -> tuple[dict, dict]:
        """Targets that mix the true labels with the teacher's soft ones (teacher_weight of the teacher's),
        and the teacher's alone where a label is unknown, weighing teacher_weight in the loss. The age target
        is (batch, 1 + AGE_BINS): the age for the L1 term (true, else the teacher's expected age), then the
        target distribution (backbone.age_distribution_loss takes both forms)."""
        outputs = self.teacher[self.teacher_rows[rows]]
        share = self.teacher_weight * np.isfinite(outputs[:, -1])  # 0 where the teacher could not read the face
        teacher_ages, p_male = np.nan_to_num(outputs[:, :AGE_BINS]), np.nan_to_num(outputs[:, -1])
        age_known, gender_known = self.age_known[rows] > 0, self.gender_known[rows] > 0
        true_ages = keras.ops.convert_to_numpy(gaussian_age_targets(self.ages[rows]))
        distribution = np.where(age_known[:, None], (1 - share[:, None]) * true_ages + share[:, None] * teacher_ages,
                                teacher_ages)
        age_years = np.where(age_known, self.ages[rows], expected_age(teacher_ages))
        gender = np.where(gender_known, (1 - share) * self.genders[rows] + share * p_male, p_male)
        targets = {"age": np.column_stack([age_years, distribution]).astype(np.float32),
                   "gender": gender[:, None].astype(np.float32)}
        weights = {"age": np.where(age_known, 1.0, share).astype(np.float32),
                   "gender": np.where(gender_known, 1.0, share).astype(np.float32)}
        return targets, weights

    def _readable_face(self) -> tuple[np.ndarray, int]:
        """Some readable face of this dataset and its row: filler for a batch whose images all failed."""
        for row, record in enumerate(self.records):
            crop = frame_row(record, self.root, self.image_size, self.framing)
            if crop is not None:
                return crop, row
        raise UserError(f"none of the {len(self.records)} images of a split can be read: is --root right?")

    def _from_files(self, rows: np.ndarray, jitters, by_box: np.ndarray):
        images = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        ok = np.zeros(len(rows), bool)
        for position, (row, jitter, boxed) in enumerate(zip(rows, jitters, by_box)):
            framing = self.box_framing if boxed else self.framing
            crop = frame_row(self.records[row], self.root, self.image_size, framing, jitter)
            if crop is None:
                self._report_unreadable(self.records[row]["path"])
            else:
                images[position], ok[position] = crop, True
        return images[ok], ok

    def _from_packed(self, rows: np.ndarray, jitters, by_box: np.ndarray):
        packed_rows = self.packed_rows[rows]
        ok = self.packed["valid"][packed_rows]
        for row in rows[~ok]:
            self._report_unreadable(self.records[row]["path"])
        margin = (self.packed["images"].shape[1] - self.image_size) // 2
        if not self.augment:
            crops = self.packed["images"][packed_rows[ok]]
            return crops[:, margin:margin + self.image_size, margin:margin + self.image_size], ok
        images = np.empty((ok.sum(), self.image_size, self.image_size, 3), np.uint8)
        from_canvas = np.array([[1, 0, -margin], [0, 1, -margin], [0, 0, 1]], np.float64)
        reframe = np.where(by_box[ok][:, None, None], self.box_relative[rows[ok]], np.eye(3))
        matrices = (np.asarray(jitters)[ok] @ from_canvas @ reframe)[:, :2] if len(images) else []
        packed_images = np.asarray(self.packed["images"])  # plain views of the mapped rows: no batch-sized copy
        for packed_row, matrix, image in zip(packed_rows[ok].tolist(), matrices, images):
            cv2.warpAffine(packed_images[packed_row], matrix, (self.image_size, self.image_size), dst=image,
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        return images, ok

    def _box_relative_matrices(self) -> np.ndarray:
        """For each row, the 3x3 map from its packed (landmark-framed) canvas to the same face framed by its
        box on that canvas: box framing without re-reading the photo. Identity where there is no choice."""
        margin = (packed_size_for(self.image_size) - self.image_size) // 2
        shift = np.array([[1, 0, margin], [0, 1, margin], [0, 0, 1]], np.float64)
        matrices = np.tile(np.eye(3), (len(self.table), 1, 1))
        for position, record in enumerate(self.records):
            face = face_of_row(record)
            if face.landmarks is None or np.isnan(face.box[0]) or self.framing["method"] != "landmarks":
                continue
            landmark_matrix = np.vstack([framing_matrix(face, self.image_size, self.framing), [0, 0, 1]])
            box_matrix = np.vstack([framing_matrix(face, self.image_size, self.box_framing), [0, 0, 1]])
            matrices[position] = shift @ box_matrix @ np.linalg.inv(landmark_matrix) @ np.linalg.inv(shift)
        return matrices

    def _report_unreadable(self, path: str) -> None:
        with self.lock:
            if not self.unreadable:
                print(f"warning: skipping unreadable image {path} (and any others: counted at the end)",
                      file=sys.stderr)
            self.unreadable.add(path)


def sampling_probabilities(table: pd.DataFrame, source_weights: dict[str, float] | None) -> np.ndarray:
    """Each row's chance of being drawn: every source gets its weight's share of an epoch (by default
    its share of rows), and within a source the two genders are drawn equally often (LFW is 77% men)."""
    sources = table["source"].fillna("").astype(str) if "source" in table else pd.Series("", index=table.index)
    rows_per_source = sources.value_counts()
    weights = source_weights or rows_per_source.to_dict()
    missing = set(rows_per_source.index) - set(weights)
    if missing:
        raise UserError(f"no sampling weight for source(s) {', '.join(sorted(missing))}")
    classes = sources + "|" + table["gender"].fillna(-1).astype(str)  # gender -1: unknown
    class_size = classes.map(classes.value_counts()).to_numpy(np.float64)
    classes_in_source = classes.groupby(sources).transform("nunique").to_numpy(np.float64)
    probability = sources.map(weights).to_numpy(np.float64) / (class_size * classes_in_source)
    return probability / probability.sum()


def degrade_like_photos(images: np.ndarray, rng: np.random.Generator) -> None:
    """In place: what real photos do to faces. Low resolution (a 20-60 px face scaled back up), blur,
    JPEG re-compression, sensor noise, colour casts, greyscale, an occluding patch, and contrast and
    brightness changes, each drawn independently per image.

    Each step visits only the images drawn for it (each image meets the steps in the order above), and
    pixel-wise steps are table look-ups or single OpenCV calls over flat rows: under half the CPU time of
    one pass per image (tests/test_augmentation.py holds that definition and checks the distribution)."""
    if not images.flags.c_contiguous:  # the pixel-wise steps work on flat views of the batch
        raise ValueError("degrade_like_photos needs a C-contiguous batch of images")
    count = len(images)
    if not count:
        return
    size = images.shape[1]
    low_res, blurred, compressed, noisy, cast, grey, occluded = (
        np.flatnonzero(chosen).tolist() for chosen in rng.random((7, count)) < DEGRADATION_SHARES[:, None])
    for index, side in zip(low_res, rng.integers(20, 61, len(low_res)).tolist()):
        small = cv2.resize(images[index], (side, side), interpolation=cv2.INTER_AREA)
        cv2.resize(small, (size, size), dst=images[index], interpolation=cv2.INTER_LINEAR)
    for index, sigma in zip(blurred, rng.uniform(0.6, 1.6, len(blurred)).tolist()):
        _gaussian_blur(images[index], sigma)
    for index, quality in zip(compressed, rng.integers(15, 75, len(compressed)).tolist()):
        encoded = cv2.imencode(".jpg", images[index], [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        images[index] = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    _add_sensor_noise(images, noisy, rng)
    # A colour cast (warm or cold light, a white balance gone wrong): each channel scaled and truncated.
    tables = np.clip(np.arange(256.0)[None, :, None, None] * rng.uniform(0.8, 1.2, (len(cast), 1, 1, 3)), 0, 255)
    for index, table in zip(cast, tables.astype(np.uint8)):
        cv2.LUT(images[index], table, dst=images[index])
    for index in grey:
        cv2.cvtColor(cv2.cvtColor(images[index], cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR, dst=images[index])
    for index in occluded:  # a hand, a microphone, another head: a patch over part of the face
        width, height = (rng.uniform(0.15, 0.4, 2) * size).astype(int)
        x, y = int(rng.integers(0, size - width)), int(rng.integers(0, size - height))
        colour = rng.integers(0, 255, 3).tolist()
        cv2.rectangle(images[index], (x, y), (x + width - 1, y + height - 1), colour, cv2.FILLED)
    contrast = rng.uniform(0.7, 1.3, count)
    shift = rng.uniform(-30, 30, count) + 128 * (1 - contrast)
    for pixels, alpha, beta in zip(images.reshape(count, 1, -1), contrast.tolist(), shift.tolist()):
        cv2.addWeighted(pixels, alpha, pixels, 0, beta, dst=pixels)  # saturates at 0 and 255


def _gaussian_blur(image: np.ndarray, sigma: float) -> None:
    """In place: cv2.GaussianBlur(image, (0, 0), sigma) with the same kernel, as a plain separable
    filter (GaussianBlur's bit-exact 8-bit path costs 2.5x as much; results differ by at most 1)."""
    kernel = cv2.getGaussianKernel(round(sigma * 6 + 1) | 1, sigma)  # GaussianBlur's own size for 8-bit images
    cv2.sepFilter2D(image, -1, kernel, kernel, dst=image, borderType=cv2.BORDER_REFLECT_101)


def _add_sensor_noise(images: np.ndarray, chosen: list[int], rng: np.random.Generator) -> None:
    """In place: Gaussian noise (sigma 3-12 levels, independent per pixel) on images[chosen], truncated to
    uint8. The chosen faces of a batch take windows of one fresh noise field: drawing a field per face
    was the costliest step of all."""
    if not chosen:
        return
    values = images[0].size
    spare = values // 2  # windows start anywhere in this many values: the faces' noise patterns differ
    field = rng.standard_normal((1, values + spare), dtype=np.float32)
    flat = images.reshape(len(images), 1, values)  # one long row: OpenCV's fastest path
    starts = rng.integers(0, spare + 1, len(chosen)).tolist()
    for index, sigma, start in zip(chosen, rng.uniform(3, 12, len(chosen)).tolist(), starts):
        # rounding x - 0.5 truncates x, as the float-to-uint8 assignment of the original step did
        cv2.addWeighted(flat[index], 1.0, field[:, start:start + values], sigma, -0.5, dst=flat[index],
                        dtype=cv2.CV_8U)
