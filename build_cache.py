"""Turn dataset metadata into cache.csv: one row per usable face with its labels, face box and identity.

    python build_cache.py --mat imdb/wiki_crop/wiki.mat --root imdb --out imdb/cache.csv
    python build_cache.py --mat wiki.mat --images wiki_crop_64 --root data --out data/wiki.csv --detect --ignore-boxes
    python build_cache.py --utkface data/UTKFace --out data/utkface.csv --detect   # + YuNet box and landmarks
    python build_cache.py --lfw data/lfw-deepfunneled --female-names data/lfw_female_names.txt \\
        --male-names data/lfw_male_names.txt --out data/lfw.csv --detect

Columns: path (relative to --root), age (years), gender (1 = male, 0 = female, IMDB-WIKI's coding),
face_x1, face_y1, face_x2, face_y2 (pixels; empty when the image is the face), face_score,
source (wiki, imdb, utkface, lfw), group (the person, or for UTKFace the image's content: split by it),
content_hash (sha256 of the image file, when it is on disk), race (UTKFace: 0 White, 1 Black, 2 Asian,
3 Indian, 4 Others), and with --detect the five YuNet landmarks (right_eye_x ... mouth_left_y) that frame
the face for the model. An empty age or gender is unknown (LFW has no ages); every row has one label.

Every source loses ages outside 0-100 and byte-identical copies of an image: one copy stays where the
copies' labels agree, none where they disagree.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils import (HelpFormatter, UserError, atomic_path, check_output_file, file_sha256, float_between,
                   require_packages, run_cli)

if TYPE_CHECKING:
    import pandas as pd

    from faces import Face, FaceDetector

BOX_COLUMNS = ["face_x1", "face_y1", "face_x2", "face_y2"]
# YuNet's five landmarks in its own order (subject's right eye first, on the image's left)
LANDMARK_COLUMNS = [
    f"{part}_{axis}" for part in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left") for axis in ("x", "y")
]
TEXT_COLUMNS = ["source", "group", "content_hash"]  # empty when unknown
AGE_BAND_EDGES = [0, 3, 10, 20, 30, 40, 50, 60, 70]  # where the nine age bands of reports and splits begin
AGE_BANDS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
CACHE_COLUMNS = ["path", "age", "gender", *BOX_COLUMNS, "face_score", *TEXT_COLUMNS, "race"]
NUMBER_COLUMNS = ["age", "gender", *BOX_COLUMNS, "face_score", "race", *LANDMARK_COLUMNS]
Table = dict[str, np.ndarray]  # column name -> one value per row; pandas is imported only to read caches
AGE_RANGE = (0, 100)  # years; the model's age outputs cover exactly these

MAT_FIELDS = ("dob", "photo_taken", "full_path", "gender", "face_location", "face_score", "second_face_score")
MAT_NUMBER_FIELDS = ("dob", "photo_taken", "gender", "face_score", "second_face_score")
UNIX_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
NEEDS_QUOTES = re.compile(r'[",\r\n]')
UTKFACE_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>[01])_(?P<race>[0-4])_(?P<time>\d+)\.jpg\.chip\.jpg$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mat", help="IMDB-WIKI metadata file (wiki.mat or imdb.mat)")
    source.add_argument("--utkface", help="folder of UTKFace images, labels read from file names")
    source.add_argument("--lfw", help="LFW folder of <Name>/<Name>_NNNN.jpg images (gender labels from the lists)")
    parser.add_argument("--female-names", help="with --lfw: file of LFW image names of women, one a line")
    parser.add_argument("--male-names", help="with --lfw: file of LFW image names of men, one a line")
    parser.add_argument("--root", help="paths in the cache are relative to this (default: imdb for --mat, "
                                       "the image folder's parent for --utkface and --lfw)")
    parser.add_argument("--out", help="output CSV (default: ROOT/cache.csv)")
    parser.add_argument("--min-score", type=float_between(-np.inf), default=1.0,
                        help="minimum face_score to keep (IMDB-WIKI)")
    parser.add_argument("--allow-second-face", action="store_true", help="keep images where a second face was found")
    parser.add_argument("--images", help="with --mat: the image folder under --root that full_path is relative to "
                                         "(default: wiki_crop or imdb_crop); rows whose image is absent are dropped")
    parser.add_argument("--partial", action="store_true",
                        help="with --mat: accept a copy holding fewer than half of the listed images")
    parser.add_argument("--ignore-boxes", action="store_true",
                        help="with --mat: the metadata face boxes do not fit these images (a resized copy): "
                             "with --detect, take the detected face nearest the centre instead")
    parser.add_argument("--detect", action="store_true",
                        help="run YuNet over the images (must be on disk) to add landmarks for framing")
    parser.add_argument("--detector-model", help="YuNet .onnx file (default: $AGE_GENDER_YUNET or the cache)")
    args = parser.parse_args(argv)
    if args.lfw and not (args.female_names and args.male_names):
        parser.error("--lfw needs --female-names and --male-names")
    if not args.lfw and (args.female_names or args.male_names):
        parser.error("--female-names and --male-names go with --lfw")
    if not args.mat and (args.images is not None or args.partial or args.ignore_boxes):
        parser.error("--images, --partial and --ignore-boxes go with --mat")
    if args.ignore_boxes and not args.detect:
        parser.error("--ignore-boxes needs --detect: the detected face replaces the metadata box")
    return args


def require_regular_file(path: Path, what_to_do: str = "") -> None:
    """Refuse a missing path, a folder, a FIFO or a device before anything reads (and blocks on) it."""
    if not path.is_file():
        raise UserError(f"{path}: " + ("not a regular file" if path.exists() else f"no such file{what_to_do}"))


def outside_root(path: str) -> bool:
    """Absolute, or climbing out with '..': a cache's paths must stay under its root."""
    return path.startswith("/") or ".." in path.split("/")


def print_dropped(count: int, reason: str) -> None:
    print(f"  dropped {count:>6} rows: {reason}")


# --- IMDB-WIKI -----------------------------------------------------------------------------------

def load_mat(mat_path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """The metadata struct's name (wiki or imdb) and its fields as flat arrays of equal length."""
    import scipy.io  # only --mat needs it

    mat_path = Path(mat_path)
    require_regular_file(mat_path)
    try:
        contents = scipy.io.loadmat(mat_path, variable_names=("wiki", "imdb"))
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{mat_path} is not a MATLAB .mat file ({reason})") from None
    names = [name for name in ("wiki", "imdb") if name in contents]
    if not names:
        raise UserError(f"{mat_path} holds no 'wiki' or 'imdb' struct")
    name, struct = names[0], contents[names[0]]
    if struct.dtype.names is None or struct.size != 1:
        shape = " x ".join(map(str, struct.shape))
        raise UserError(f"{mat_path}: '{name}' holds {shape} {kind_of(struct)}, expected one struct")
    missing = [field for field in MAT_FIELDS if field not in struct.dtype.names]
    if missing:
        raise UserError(f"{mat_path}: struct '{name}' lacks fields {', '.join(missing)}")
    record = struct.flat[0]
    fields = {field: np.ravel(record[field]) for field in MAT_FIELDS}
    lengths = {field: len(values) for field, values in fields.items()}
    if len(set(lengths.values())) != 1:
        raise UserError(f"{mat_path}: the fields of '{name}' differ in length "
                        f"({', '.join(f'{f} {n}' for f, n in lengths.items())})")
    if not lengths["dob"]:
        raise UserError(f"{mat_path}: struct '{name}' holds no entries")
    for field in MAT_NUMBER_FIELDS:
        if fields[field].dtype.kind not in "biuf":
            raise UserError(f"{mat_path}: field '{field}' holds {kind_of(fields[field])}, not numbers")
    return name, fields


def kind_of(array: np.ndarray) -> str:
    """What a MATLAB value holds, in MATLAB's words."""
    if array.dtype.names:
        return "struct array"
    return {"U": "text", "S": "text", "O": "cells", "b": "logicals"}.get(array.dtype.kind, "numbers")


def mat_numbers(mat_path: Path, field: str, cells: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    """The kept entries of a cell-array field as rows of size numbers (one face box a cell)."""
    try:
        values = np.array(cells[keep].tolist())  # cells of differing shapes raise
    except ValueError:
        values = None
    if values is None or values.dtype.kind not in "biuf" or values.size != size * keep.sum():
        refuse_bad_cell(mat_path, field, cells, keep, size, "biuf")
    return values.reshape(-1, size).astype(np.float64)


def mat_texts(mat_path: Path, field: str, cells: np.ndarray, keep: np.ndarray) -> list[str]:
    """The kept entries of a cell-array field of one text each (the image paths)."""
    try:
        values = [cell.item() for cell in cells[keep]]  # a cell of several values raises
    except (ValueError, AttributeError):
        values = None
    if values is None or not all(type(value) is str for value in values):
        refuse_bad_cell(mat_path, field, cells, keep, 1, "U")
    return values


def refuse_bad_cell(mat_path: Path, field: str, cells: np.ndarray, keep: np.ndarray, size: int, kinds: str):
    for position in np.flatnonzero(keep):
        cell = np.asarray(cells[position])
        if cell.size != size or cell.dtype.kind not in kinds:
            raise UserError(f"{mat_path}: entry {position + 1} of '{field}' holds {cell.size} {kind_of(cell)}, "
                            f"expected {'one text' if kinds == 'U' else f'{size} numbers'}")
    raise UserError(f"{mat_path}: the cells of '{field}' differ in shape")


def age_at_photo(dob_datenum: np.ndarray, photo_taken: np.ndarray) -> np.ndarray:
    """Age in years, assuming the photo was taken mid-year: born in July or later counts one year less.
    Birth dates outside what numpy's day calendar holds give NaN."""
    days_since_epoch = np.nan_to_num(dob_datenum.astype(np.float64), nan=np.inf) - 366 - UNIX_EPOCH_ORDINAL
    valid = np.abs(days_since_epoch) < 1e8  # about 270,000 years either way
    birth = np.where(valid, days_since_epoch, 0).astype(np.int64).astype("datetime64[D]")
    birth_year = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    birth_month = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    ages = photo_taken.astype(np.float64) - birth_year - (birth_month >= 7)
    return np.where(valid, ages, np.nan)


def rows_from_mat(mat_path: str, min_score: float, allow_second_face: bool, root: Path | None = None,
                  images: str | None = None, partial: bool = False, ignore_boxes: bool = False) -> Table:
    """The rows of an IMDB-WIKI .mat that pass the face rules. When the image folder (images, by default
    wiki_crop or imdb_crop) is under root, rows whose image is absent are dropped and the rest get content
    hashes. Boxes and paths are unpacked only for the rows the other rules keep (the slow part after loadmat)."""
    struct_name, fields = load_mat(mat_path)
    gender, face_score = fields["gender"].astype(np.float64), fields["face_score"].astype(np.float64)
    print(f"{mat_path}: {len(gender)} entries in '{struct_name}'")
    rules = {
        f"face_score < {min_score} (no face found, or a weak one)": face_score >= min_score,
        "a second face in the image": np.isnan(fields["second_face_score"].astype(np.float64)) | allow_second_face,
        "gender unknown (or not 0/1)": (gender == 0) | (gender == 1),
    }
    keep = np.ones(len(gender), bool)
    for rule, passes in rules.items():
        print_dropped(int((keep & ~passes).sum()), rule)
        keep &= passes
    boxes = mat_numbers(Path(mat_path), "face_location", fields["face_location"], keep, 4)
    box_is_valid = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    print_dropped(int((~box_is_valid).sum()), "face box not finite or empty")
    keep[np.flatnonzero(keep)[~box_is_valid]] = False
    folder = Path(images).as_posix() if images is not None else f"{struct_name}_crop"  # ./x/ is x
    if outside_root(folder + "/") or folder in ("", "."):
        raise UserError(f"--images {images!r}: name a folder under --root")
    if images is not None and root is not None and not (Path(root) / folder).is_dir():
        raise UserError(f"--images {images}: {Path(root) / folder} is not a folder")
    paths = [f"{folder}/{path}" for path in mat_texts(Path(mat_path), "full_path", fields["full_path"], keep)]
    if "/.." in "\n".join(paths):  # rare: look closer only then
        climbing = next((path for path in paths if outside_root(path)), None)
        if climbing:
            raise UserError(f"{mat_path}: the path {climbing!r} leads out of the image folder")
    table = table_with_columns({
        "path": paths,
        "age": age_at_photo(fields["dob"][keep], fields["photo_taken"][keep]),
        "gender": gender[keep],
        # a resized copy's images do not match the boxes (pixels of the original crops): detection replaces them
        **({} if ignore_boxes else dict(zip(BOX_COLUMNS, boxes[box_is_valid].T))),
        "face_score": face_score[keep],
        "source": struct_name,
        # IMDB-WIKI file names start with the person: nm0000001_rm... (imdb), 10000217_1981-05-05_2009 (wiki)
        "group": [path.rsplit("/", 1)[-1].split("_", 1)[0] for path in paths],
    })
    if root is not None and (Path(root) / folder).is_dir():  # the images are there: keep those present, hash them
        table = drop_absent_images(table, Path(root), folder, partial)
        table["content_hash"] = np.array(content_hashes(Path(root), table["path"]), dtype=object)
    return table


def drop_absent_images(table: Table, root: Path, folder: str, partial: bool) -> Table:
    """Keep the rows whose image is in the folder (a partial or resized copy holds a subset), counted."""
    present = np.array([(root / path).is_file() for path in table["path"]], bool)
    print_dropped(int((~present).sum()), f"image absent from {root / folder}")
    if not present.any():
        raise UserError(f"none of the {len(present)} images that pass the rules is in {root / folder}: "
                        "is --root (or --images) right?")
    if present.mean() < 0.5 and not partial:
        raise UserError(f"only {present.sum()} of the {len(present)} images that pass the rules are in "
                        f"{root / folder}: extract the whole archive there, or add --partial to use these")
    return select_rows(table, present)


def check_boxes_fit(table: Table, root: Path, sample: int = 200) -> None:
    """Refuse metadata boxes that lie outside their images, as a resized copy's do: they would frame
    background. Checked on a sample of rows, from the image headers alone."""
    from PIL import Image

    boxes = np.stack([table[column] for column in BOX_COLUMNS], axis=1)
    rows = np.flatnonzero(~np.isnan(boxes[:, 0]))[:sample]
    outside = checked = 0
    for row in rows:
        try:
            with Image.open(root / table["path"][row]) as image:
                width, height = image.size
        except (OSError, Image.DecompressionBombError):  # absent or unreadable: the image checks report those
            continue
        checked += 1
        x1, y1, x2, y2 = boxes[row]
        outside += bool(x2 > width * 1.05 or y2 > height * 1.05 or x1 < -0.05 * width or y1 < -0.05 * height)
    if checked and outside > checked / 2:
        raise UserError(f"{outside} of {checked} metadata face boxes checked lie outside their images (a resized "
                        "copy?): add --ignore-boxes (with --detect) to find the faces instead")


# --- folders of images: UTKFace, LFW ------------------------------------------------------------

def folder_inside_root(folder: str | Path, root: Path) -> tuple[Path, Path]:
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: no such folder")
    folder, root = Path(folder).resolve(), Path(root).resolve()
    if not folder.is_relative_to(root):
        raise UserError(f"{folder} is not inside --root {root}")
    return folder, root


def regular_files(paths: list[Path], folder: Path) -> list[Path]:
    """The regular files among paths: FIFOs and devices would hang a reader, folders fail it (counted)."""
    files = [path for path in paths if path.is_file()]
    if len(files) < len(paths):
        print(f"{folder}: {len(paths) - len(files)} entries skipped: not regular files")
    return files


def content_hashes(root: Path, paths) -> list[str]:
    """sha256 of each regular file under root ('' where it is missing or unreadable: nothing to compare)."""
    from tqdm import tqdm

    hashes = []
    for path in tqdm(list(paths), desc="hash images", unit="image", mininterval=0.5):
        try:
            hashes.append(file_sha256(root / path) if (root / path).is_file() else "")
        except OSError:
            hashes.append("")
    return hashes


def rows_from_utkface(folder: str | Path, root: Path) -> Table:
    """One row per image named age_gender_race_time.jpg.chip.jpg; the group is its content hash."""
    folder, root = folder_inside_root(folder, root)
    rows, malformed = [], []
    for image_path in regular_files(sorted(folder.iterdir()), folder):
        match = UTKFACE_NAME.match(image_path.name)
        if match is None:
            malformed.append(image_path.name)
            continue
        # UTKFace codes 0 = male, 1 = female; the cache uses IMDB-WIKI's 1 = male.
        rows.append((image_path.relative_to(root).as_posix(), int(match["age"]), 1 - int(match["gender"]),
                     int(match["race"])))
    print(f"{folder}: {len(rows)} faces, {len(malformed)} malformed names skipped"
          + (f" (e.g. {', '.join(malformed[:3])})" if malformed else ""))
    paths, ages, genders, races = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
    hashes = content_hashes(root, paths)
    return table_with_columns({"path": paths, "age": ages, "gender": genders, "race": races, "source": "utkface",
                               "group": hashes, "content_hash": hashes})


def read_name_list(path: str | Path) -> set[str]:
    """LFW label file: one image file name a line (Windows line ends and blank lines are fine)."""
    require_regular_file(Path(path))
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the name list {path}: {getattr(error, 'strerror', None) or error}") from None
    names = {line.strip() for line in lines if line.strip()}
    odd = sorted(name for name in names if "/" in name or not name.lower().endswith(".jpg"))
    if odd:
        raise UserError(f"{path} is not a list of LFW image names (one Name_NNNN.jpg a line): e.g. {odd[0]!r}")
    return names


def rows_from_lfw(folder: str | Path, root: Path, female_names: str | Path, male_names: str | Path) -> Table:
    """One row per LFW image named in exactly one of the two gender lists; the group is the person."""
    folder, root = folder_inside_root(folder, root)
    women, men = read_name_list(female_names), read_name_list(male_names)
    both = women & men
    gender_of = {**{name: 0 for name in women - both}, **{name: 1 for name in men - both}}
    images = regular_files(sorted(folder.glob("*/*.jpg")), folder)
    labelled = [image for image in images if image.name in gender_of]
    print(f"{folder}: {len(images)} images of {len({image.parent for image in images})} people, "
          f"{len(women)} + {len(men)} names in the gender lists")
    print_dropped(sum(image.name in both for image in images), f"named in both lists ({len(both)} names)")
    print_dropped(len(images) - len(labelled) - sum(image.name in both for image in images), "in neither list")
    paths = [image.relative_to(root).as_posix() for image in labelled]
    return table_with_columns({
        "path": paths,
        "gender": [gender_of[image.name] for image in labelled],
        "source": "lfw",
        "group": [image.parent.name for image in labelled],
        "content_hash": content_hashes(root, paths),
    })


def table_with_columns(columns: dict) -> Table:
    """A table (column name -> numpy array) with every cache column in order: numbers as float64, text as
    Python strings (one text may stand for the whole column), absent labels and boxes NaN, absent text
    empty. Landmark columns are kept when present."""
    rows = len(columns["path"])
    table = {}
    for column in CACHE_COLUMNS + [c for c in LANDMARK_COLUMNS if c in columns]:
        if column in TEXT_COLUMNS or column == "path":
            text = columns.get(column, "")
            table[column] = np.full(rows, text, dtype=object) if isinstance(text, str) else np.array(text, dtype=object)
        else:
            table[column] = np.asarray(columns[column], np.float64) if column in columns else np.full(rows, np.nan)
    return table


def select_rows(table: Table, keep: np.ndarray) -> Table:
    return {column: values[keep] for column, values in table.items()}


# --- rules every source shares ------------------------------------------------------------------

def drop_implausible_ages(table: Table) -> Table:
    """Drop rows whose age is known but outside AGE_RANGE (unknown ages stay)."""
    age = table["age"]
    keep = np.isnan(age) | ((age >= AGE_RANGE[0]) & (age <= AGE_RANGE[1]))
    print_dropped(int((~keep).sum()), f"age outside {AGE_RANGE[0]}-{AGE_RANGE[1]}")
    return select_rows(table, keep)


def drop_exact_duplicates(table: Table) -> Table:
    """Byte-identical images (same content_hash) count once: keep the first copy where all copies' ages and
    genders agree, drop every copy where they disagree (which label would be true is unknown)."""
    copies: dict[str, list[int]] = {}
    hashes = table["content_hash"]
    if (hashes != "").any():  # metadata without images has no hashes
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        for row in np.flatnonzero(np.isin(hashes, hashes[first[counts > 1]]) & (hashes != "")):
            copies.setdefault(hashes[row], []).append(row)
    labels = np.nan_to_num(np.stack([table["age"], table["gender"]], axis=1), nan=-1)  # unknown agrees with unknown
    conflicting = [rows for rows in copies.values() if len({tuple(labels[row]) for row in rows}) > 1]
    extra = [row for rows in copies.values() if rows not in conflicting for row in rows[1:]]
    keep = np.ones(len(hashes), bool)
    keep[extra + [row for rows in conflicting for row in rows]] = False
    print_dropped(len(extra), f"extra copies of a byte-identical image with the same labels "
                              f"({len(copies) - len(conflicting)} groups, one copy each kept)")
    print_dropped(sum(map(len, conflicting)),
                  f"byte-identical copies whose labels disagree ({len(conflicting)} groups)")
    return select_rows(table, keep)


# --- detection ----------------------------------------------------------------------------------

def add_landmarks(table: Table, root: Path, detector: FaceDetector) -> Table:
    """Detect each image's face once. A face box from the metadata picks the face and is kept; images
    without one (UTKFace chips, LFW photos: the subject is centred) take the YuNet face nearest the image
    centre. Those with no face are dropped: predict.py could not find them either, so they would teach a
    framing the model never sees."""
    from tqdm import tqdm

    from faces import read_training_image  # OpenCV is only needed here, not for the metadata

    landmarks = np.full((len(table["path"]), 10), np.nan)
    boxes = np.stack([table[column] for column in BOX_COLUMNS], axis=1).astype(np.float64)
    scores = np.array(table["face_score"], np.float64)
    unreadable = 0
    for row, path in enumerate(tqdm(table["path"], desc="detect faces", unit="image", mininterval=0.5)):
        image = read_training_image(root / path) if (root / path).is_file() else None
        if image is None:
            unreadable += 1
            continue
        faces = detector.detect(image)
        if not np.isnan(boxes[row, 0]):  # keep the face whose centre lies inside the metadata box
            x1, y1, x2, y2 = boxes[row]
            faces = [f for f in faces if x1 <= f.box[0] + f.box[2] / 2 <= x2 and y1 <= f.box[1] + f.box[3] / 2 <= y2]
        elif faces:
            height, width = image.shape[:2]
            faces = [min(faces, key=lambda f: np.hypot(f.box[0] + f.box[2] / 2 - width / 2,
                                                       f.box[1] + f.box[3] / 2 - height / 2))]
            x, y, face_width, face_height = faces[0].box
            boxes[row], scores[row] = (x, y, x + face_width, y + face_height), faces[0].score
        if faces:
            landmarks[row] = faces[0].landmarks.ravel()
    table = {**table, **dict(zip(BOX_COLUMNS, boxes.T)), "face_score": scores,
             **dict(zip(LANDMARK_COLUMNS, landmarks.T))}
    found = int((~np.isnan(landmarks[:, 0])).sum())
    print(f"  landmarks found for {found} of {len(boxes)} images ({unreadable} unreadable)")
    no_box = np.isnan(boxes[:, 0])
    if no_box.any():
        print_dropped(int(no_box.sum()), "no face detected in an image that has no face box")
    return select_rows(table, ~no_box)


# --- reading and writing caches -----------------------------------------------------------------

def teacher_outputs_path(cache_path: str | Path) -> Path:
    """Where teacher.py writes a cache's teacher outputs (beside it), and where train.py --teacher reads them."""
    return Path(cache_path).with_suffix(".teacher.npz")


def load_cache(cache_path: str | Path) -> pd.DataFrame:
    """Read and check cache.csv. Columns added by later versions are filled for older files (NaN, or ''
    for text); age and gender are floats with NaN for unknown. Invalid values are refused with one line
    naming the column and the first bad row: training on them gives NaN models."""
    import pandas as pd

    cache_path = Path(cache_path)
    require_regular_file(cache_path, " (build it with build_cache.py)")
    try:
        table = pd.read_csv(cache_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{cache_path} is not a readable CSV: {str(error).strip().splitlines()[0]}") from None
    missing = {"path", "age", "gender"} - set(table.columns)
    if missing:
        raise UserError(f"{cache_path} lacks columns {', '.join(sorted(missing))}")

    def refuse(column: str, bad: pd.Series, what: str):
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{cache_path}: column '{column}', row {row + 1} (line {row + 2}): "
                        f"{what.format(table[column].iloc[row])} ({int(bad.sum())} such rows)")

    paths = table["path"].str.strip()
    for bad, what in [(paths == "", "empty path: every row needs one"),
                      (paths.map(outside_root), "{!r} is not a path inside the root (absolute, or with ..)")]:
        if bad.any():
            refuse("path", bad, what)
    for column in NUMBER_COLUMNS:
        if column not in table:
            table[column] = np.nan
            continue
        text = table[column].str.strip()
        values = pd.to_numeric(text.where(text != ""), errors="coerce")
        if (bad := values.isna() & (text != "") & ~text.str.lower().isin(["nan", "na"])).any():
            refuse(column, bad, "{!r} is not a number")
        table[column] = values.astype(np.float64)
    rules = {
        "age": (~table["age"].between(*AGE_RANGE) & table["age"].notna(),
                f"{{:g}} is not an age in years from {AGE_RANGE[0]} to {AGE_RANGE[1]}"),
        "gender": (~table["gender"].isin([0, 1]) & table["gender"].notna(), "{:g} is not a gender (1 male, 0 female)"),
    }
    for column, (bad, what) in rules.items():
        if bad.any():
            refuse(column, bad, what)
    if (unlabelled := table["age"].isna() & table["gender"].isna()).any():
        refuse("age", unlabelled, "no age and no gender: every row needs at least one label")
    for column in TEXT_COLUMNS:
        if column not in table:
            table[column] = ""
    return table.reset_index(drop=True)


def face_of_row(row) -> Face:
    """The face to frame for one cache row: landmarks if present, else its box, else the whole image."""
    from faces import Face

    landmarks = np.array([row[c] for c in LANDMARK_COLUMNS], np.float64)
    x1, y1, x2, y2 = (row[c] for c in BOX_COLUMNS)
    has_landmarks = not np.isnan(landmarks).any()
    box_source = row.get("box_source")
    if not isinstance(box_source, str):  # detected boxes come with landmarks; others are the dataset's own
        box_source = "yunet" if has_landmarks else "metadata"
    return Face(
        box=(x1, y1, x2 - x1, y2 - y1) if not np.isnan(x1) else (np.nan,) * 4,
        landmarks=landmarks.reshape(5, 2) if has_landmarks else None,
        score=row["face_score"],
        box_source=box_source,
    )


def image_path_of_row(row, root: str | Path) -> Path:
    """A row's image: under its own `root` column when the table mixes sources, else under root."""
    row_root = row.get("root")
    return Path(row_root if isinstance(row_root, str) and row_root else root) / row["path"]


def frame_row(row, root: str | Path, size: int, framing: dict | None = None, jitter: np.ndarray | None = None,
              canvas: int | None = None) -> np.ndarray | None:
    """Read one cache row's image and frame its face; None if the image is missing or corrupt."""
    from faces import frame_face, read_training_image

    face = face_of_row(row)
    # Decoded at full size, as predict.py decodes photos: a reduced decode would shrink differently.
    image = read_training_image(image_path_of_row(row, root))
    if image is None:
        return None
    if np.isnan(face.box[0]):  # the image is the face (an aligned set without detection): frame it whole
        height, width = image.shape[:2]
        face.box, face.box_source = (0.0, 0.0, float(width), float(height)), "yunet"
    return frame_face(image, face, size, framing, jitter, canvas)


def age_band(age_years) -> np.ndarray:
    """Index of the age band (AGE_BAND_EDGES) of each age; -1 where the age is unknown."""
    ages = np.asarray(age_years, np.float64)
    bands = np.searchsorted(AGE_BAND_EDGES, np.nan_to_num(ages, nan=0.0), side="right") - 1
    return np.where(np.isnan(ages), -1, bands)


def load_source(cache: str | Path, root: str | Path) -> pd.DataFrame:
    """One cache's rows, each with its `source` (its own, else the cache's file name) and its `root`."""
    table = load_cache(cache)  # refuses labels the model cannot learn (they train to NaN)
    table["source"] = table["source"].where(table["source"] != "", Path(cache).stem)
    table["root"] = str(root)
    return table


def load_sources(caches: list[str], roots: list[str]) -> list[pd.DataFrame]:
    """load_source of each cache, with one root for all of them or one root each."""
    roots = roots * len(caches) if len(roots) == 1 else roots
    return [load_source(cache, root) for cache, root in zip(caches, roots)]


def add_source_arguments(parser: argparse.ArgumentParser, cache_help: str) -> None:
    """--cache CSV... and --root DIR..., as load_sources takes them (check_source_arguments checks them)."""
    parser.add_argument("--cache", nargs="+", required=True, metavar="CSV", help=cache_help)
    parser.add_argument("--root", nargs="+", default=["imdb"], metavar="DIR",
                        help="folder the cache paths are relative to: one for all caches, or one per cache")


def check_source_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(args.root) not in (1, len(args.cache)):
        parser.error(f"give one --root for all caches or one per cache ({len(args.cache)}), not {len(args.root)}")


def csv_fields(values) -> list[str]:
    """One column as CSV fields: numbers as %.9g (28, not 28.0; exact for float32 detector output), NaN as
    an empty field, text quoted only where it has to be."""
    values = np.asarray(values)
    if values.dtype.kind in "biuf":
        numbers = values.astype(np.float64)
        if (numbers == np.round(numbers)).all() and (np.abs(numbers) < 2 ** 53).all():  # whole numbers: faster
            return list(map(str, numbers.astype(np.int64).tolist()))
        missing = np.isnan(numbers)
        if missing.all():
            return [""] * len(numbers)
        fields = list(map("%.9g".__mod__, numbers.tolist()))
        for row in np.flatnonzero(missing):
            fields[row] = ""
        return fields
    fields = list(map(str, values.tolist()))
    if NEEDS_QUOTES.search("".join(fields)):
        fields = ['"' + field.replace('"', '""') + '"' if NEEDS_QUOTES.search(field) else field for field in fields]
    return fields


def write_cache(table: Table | pd.DataFrame, out_path: str | Path) -> None:
    """Write a table (a DataFrame, or column name -> values) as CSV, atomically. Written without pandas:
    its import and to_csv cost more than the rest of building an IMDB-WIKI cache."""
    columns = list(table)
    lines = map(",".join, zip(*(csv_fields(table[column]) for column in columns)))
    with atomic_path(out_path) as temp_path:
        with open(temp_path, "w", encoding="utf-8", newline="") as file:
            file.write("\n".join([",".join(csv_fields(np.array(columns))), *lines]) + "\n")


def refuse_image_as_output(out_path: Path, root: Path, image_paths: np.ndarray) -> None:
    out_path_resolved, root = out_path.resolve(), root.resolve()
    if out_path_resolved.is_relative_to(root) and out_path_resolved.relative_to(root).as_posix() in set(image_paths):
        raise UserError(f"refusing to overwrite the image {out_path} with the cache: choose another --out")


def main(argv=None) -> int:
    require_packages("build_cache.py", "pandas")
    args = parse_args(argv)
    inputs = [args.mat, args.utkface, args.lfw, args.female_names, args.male_names, args.detector_model]
    root = Path(args.root or ("imdb" if args.mat else Path(args.utkface or args.lfw).resolve().parent))
    out_path = check_output_file(args.out or root / "cache.csv", inputs)
    if args.detect:  # before the long work: a missing detector should fail at once
        from faces import FaceDetector

        detector = FaceDetector("yunet", args.detector_model)
        if detector.kind != "yunet":
            raise UserError("--detect needs the YuNet detector (its landmarks frame the faces)")
    if args.mat:
        table = rows_from_mat(args.mat, args.min_score, args.allow_second_face, root, args.images, args.partial,
                              args.ignore_boxes)
        if not args.ignore_boxes:
            check_boxes_fit(table, root)
    elif args.utkface:
        table = rows_from_utkface(args.utkface, root)
    else:
        table = rows_from_lfw(args.lfw, root, args.female_names, args.male_names)
    refuse_image_as_output(out_path, root, table["path"])
    table = drop_implausible_ages(drop_exact_duplicates(table))  # a copy labelled 103 casts doubt on its twin
    if args.detect:
        table = add_landmarks(table, root, detector)
    if not len(table["path"]):
        raise UserError(f"no usable faces are left, so nothing was written to {out_path}")
    write_cache(table, out_path)
    print(f"wrote {len(table['path'])} rows to {out_path}")
    return 0


if __name__ == "__main__":
    run_cli(main, exit_code=2)
