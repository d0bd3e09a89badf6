"""Turn dataset metadata into cache.csv: one row per usable face with its labels, face box and identity.

    python build_cache.py --mat imdb/wiki_crop/wiki.mat --root imdb --out imdb/cache.csv
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
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from utils import HelpFormatter, UserError, atomic_path, check_output_file, float_between, run_cli

if TYPE_CHECKING:
    from faces import FaceDetector

BOX_COLUMNS = ["face_x1", "face_y1", "face_x2", "face_y2"]
# YuNet's five landmarks in its own order (subject's right eye first, on the image's left)
LANDMARK_COLUMNS = [
    f"{part}_{axis}" for part in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left") for axis in ("x", "y")
]
TEXT_COLUMNS = ["source", "group", "content_hash"]  # empty when unknown
CACHE_COLUMNS = ["path", "age", "gender", *BOX_COLUMNS, "face_score", *TEXT_COLUMNS, "race"]
NUMBER_COLUMNS = ["age", "gender", *BOX_COLUMNS, "face_score", "race", *LANDMARK_COLUMNS]
AGE_RANGE = (0, 100)  # years; the model's age outputs cover exactly these

MAT_FIELDS = ("dob", "photo_taken", "full_path", "gender", "face_location", "face_score", "second_face_score")
MAT_NUMBER_FIELDS = ("dob", "photo_taken", "gender", "face_score", "second_face_score")
UNIX_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
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
    parser.add_argument("--detect", action="store_true",
                        help="run YuNet over the images (must be on disk) to add landmarks for framing")
    parser.add_argument("--detector-model", help="YuNet .onnx file (default: $AGE_GENDER_YUNET or the cache)")
    args = parser.parse_args(argv)
    if args.lfw and not (args.female_names and args.male_names):
        parser.error("--lfw needs --female-names and --male-names")
    if not args.lfw and (args.female_names or args.male_names):
        parser.error("--female-names and --male-names go with --lfw")
    return args


def require_regular_file(path: Path, what_to_do: str = "") -> None:
    """Refuse a missing path, a folder, a FIFO or a device before anything reads (and blocks on) it."""
    if not path.is_file():
        raise UserError(f"{path}: " + ("not a regular file" if path.exists() else f"no such file{what_to_do}"))


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


def mat_cells(mat_path: Path, field: str, cells: np.ndarray, size: int | None, kind: str) -> np.ndarray:
    """The values of a cell-array field stacked into one array, after checking every cell's size and type."""
    cells = [np.ravel(cell) if isinstance(cell, np.ndarray) else np.ravel(np.asarray(cell)) for cell in cells]
    for position, cell in enumerate(cells):
        if cell.dtype.kind not in kind or (size is not None and cell.size != size) or (size is None and cell.size != 1):
            raise UserError(f"{mat_path}: entry {position + 1} of '{field}' holds {cell.size} {kind_of(cell)}, "
                            f"expected {f'{size} numbers' if size else 'one text'}")
    return np.concatenate(cells) if cells else np.empty(0)


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


def person_of_path(path: str) -> str:
    """IMDB-WIKI file names start with the person: nm0000001_rm... (imdb) or 10000217_1981-05-05_2009 (wiki)."""
    return path.rsplit("/", 1)[-1].split("_", 1)[0]


def rows_from_mat(mat_path: str, min_score: float, allow_second_face: bool, root: Path | None = None) -> pd.DataFrame:
    """The rows of an IMDB-WIKI .mat that pass the face rules; images found under root get content hashes."""
    struct_name, fields = load_mat(mat_path)
    paths = mat_cells(Path(mat_path), "full_path", fields["full_path"], None, "U")
    boxes = mat_cells(Path(mat_path), "face_location", fields["face_location"], 4, "biuf")
    boxes = boxes.reshape(-1, 4).astype(np.float64)
    table = pd.DataFrame({
        "path": np.char.add(f"{struct_name}_crop/", paths.astype(str)),
        "age": age_at_photo(fields["dob"], fields["photo_taken"]),
        "gender": fields["gender"].astype(np.float64),
        **dict(zip(BOX_COLUMNS, boxes.T)),
        "face_score": fields["face_score"],
        "source": struct_name,
        "group": [person_of_path(path) for path in paths],
    })
    print(f"{mat_path}: {len(table)} entries in '{struct_name}'")
    rules = {
        f"face_score < {min_score} (no face found, or a weak one)": table.face_score >= min_score,
        "a second face in the image": table.face_score.notna() if allow_second_face
        else np.isnan(fields["second_face_score"].astype(np.float64)),
        "gender unknown (or not 0/1)": table.gender.isin([0, 1]),
        "face box not finite or empty": np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0])
        & (boxes[:, 3] > boxes[:, 1]),
    }
    keep = np.ones(len(table), bool)
    for rule, passes in rules.items():
        dropped = keep & ~np.asarray(passes)
        print_dropped(dropped.sum(), rule)
        keep &= ~dropped
    table = table_with_columns(table[keep].reset_index(drop=True))
    if root is not None and (Path(root) / f"{struct_name}_crop").is_dir():  # the images are there: hash them
        table["content_hash"] = content_hashes(Path(root), table["path"])
    return table


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def rows_from_utkface(folder: str | Path, root: Path) -> pd.DataFrame:
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
    table = pd.DataFrame(rows, columns=["path", "age", "gender", "race"])
    hashes = content_hashes(root, table["path"])
    return table_with_columns(table.assign(source="utkface", group=hashes, content_hash=hashes))


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


def rows_from_lfw(folder: str | Path, root: Path, female_names: str | Path, male_names: str | Path) -> pd.DataFrame:
    """One row per LFW image named in exactly one of the two gender lists; the group is the person."""
    folder, root = folder_inside_root(folder, root)
    women, men = read_name_list(female_names), read_name_list(male_names)
    both = women & men
    gender_of = {**{name: 0 for name in women - both}, **{name: 1 for name in men - both}}
    images = regular_files(sorted(folder.glob("*/*.jpg")), folder)
    rows = [(image.relative_to(root).as_posix(), gender_of[image.name], image.parent.name)
            for image in images if image.name in gender_of]
    unlisted = sum(image.name not in gender_of and image.name not in both for image in images)
    print(f"{folder}: {len(images)} images of {len({image.parent for image in images})} people, "
          f"{len(women)} + {len(men)} names in the gender lists")
    print_dropped(sum(image.name in both for image in images), f"named in both lists ({len(both)} names)")
    print_dropped(unlisted, "in neither list")
    table = pd.DataFrame(rows, columns=["path", "gender", "group"])
    return table_with_columns(table.assign(source="lfw", content_hash=content_hashes(root, table["path"])))


def table_with_columns(table: pd.DataFrame) -> pd.DataFrame:
    """table with every cache column, in order: absent labels and boxes NaN, absent text empty."""
    table = table.copy()
    for column in CACHE_COLUMNS + [c for c in LANDMARK_COLUMNS if c in table]:
        if column not in table:
            table[column] = "" if column in TEXT_COLUMNS else np.nan
    numbers = [column for column in NUMBER_COLUMNS if column in table]
    table[numbers] = table[numbers].astype(np.float64)
    return table[CACHE_COLUMNS + [c for c in LANDMARK_COLUMNS if c in table]]


# --- rules every source shares ------------------------------------------------------------------

def drop_implausible_ages(table: pd.DataFrame) -> pd.DataFrame:
    """Drop rows whose age is known but outside AGE_RANGE (unknown ages stay)."""
    age = table["age"].astype(np.float64)
    keep = age.isna() | age.between(*AGE_RANGE)
    print_dropped(int((~keep).sum()), f"age outside {AGE_RANGE[0]}-{AGE_RANGE[1]}")
    return table[keep.to_numpy()].reset_index(drop=True)


def drop_exact_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """Byte-identical images (same content_hash) count once: keep the first copy where all copies' ages and
    genders agree, drop every copy where they disagree (which label would be true is unknown)."""
    hashed = table[table["content_hash"].astype(str) != ""]
    copies = hashed[hashed.duplicated("content_hash", keep=False)]
    labels = copies[["age", "gender"]].astype(np.float64).fillna(-1)  # unknown agrees with unknown
    distinct_labels = labels.assign(content_hash=copies["content_hash"]).drop_duplicates().groupby("content_hash").size()
    conflicting = distinct_labels.index[distinct_labels > 1]
    in_conflict = copies["content_hash"].isin(conflicting)
    extra = copies[~in_conflict].duplicated("content_hash")
    drop = copies.index[in_conflict].union(extra.index[extra])
    groups = copies["content_hash"].nunique()
    print_dropped(int(extra.sum()), f"extra copies of a byte-identical image with the same labels "
                                    f"({groups - len(conflicting)} groups, one copy each kept)")
    print_dropped(int(in_conflict.sum()), f"byte-identical copies whose labels disagree ({len(conflicting)} groups)")
    return table.drop(index=drop).reset_index(drop=True)


# --- detection ----------------------------------------------------------------------------------

def add_landmarks(table: pd.DataFrame, root: Path, detector: FaceDetector) -> pd.DataFrame:
    """Detect each image's face once. A face box from the metadata picks the face and is kept; images
    without one (UTKFace chips, LFW photos: the subject is centred) take the YuNet face nearest the image
    centre. Those with no face are dropped: predict.py could not find them either, so they would teach a
    framing the model never sees."""
    from tqdm import tqdm

    from faces import read_training_image  # OpenCV is only needed here, not for the metadata

    landmarks = np.full((len(table), 10), np.nan)
    boxes = table[BOX_COLUMNS].to_numpy(np.float64).copy()
    scores = table["face_score"].to_numpy(np.float64).copy()
    unreadable = 0
    for row, path in enumerate(tqdm(table["path"], desc="detect faces", unit="image", mininterval=0.5)):
        image, _ = read_training_image(root / path) if (root / path).is_file() else (None, 1)
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
    table = table.copy()
    table[BOX_COLUMNS], table["face_score"], table[LANDMARK_COLUMNS] = boxes, scores, landmarks
    found = ~np.isnan(landmarks[:, 0])
    print(f"  landmarks found for {found.sum()} of {len(table)} images ({unreadable} unreadable)")
    no_box = np.isnan(boxes[:, 0])
    if no_box.any():
        print_dropped(int(no_box.sum()), "no face detected in an image that has no face box")
    return table[~no_box].reset_index(drop=True)


# --- reading and writing caches -----------------------------------------------------------------

def load_cache(cache_path: str | Path) -> pd.DataFrame:
    """Read and check cache.csv. Columns added by later versions are filled for older files (NaN, or ''
    for text); age and gender are floats with NaN for unknown. Invalid values are refused with one line
    naming the column and the first bad row: training on them gives NaN models."""
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
                      (paths.str.startswith("/") | paths.str.contains(r"(?:^|/)\.\.(?:/|$)"),
                       "{!r} is not a path inside the root (absolute, or with ..)")]:
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


def write_cache(table: pd.DataFrame, out_path: str | Path) -> None:
    with atomic_path(out_path) as temp_path:
        table.to_csv(temp_path, index=False, float_format="%.9g")  # exact for float32 detector output


def refuse_image_as_output(out_path: Path, root: Path, image_paths: pd.Series) -> None:
    out_in_root = out_path.resolve()
    if out_in_root.is_relative_to(root.resolve()) and out_in_root.relative_to(root.resolve()).as_posix() in set(image_paths):
        raise UserError(f"refusing to overwrite the image {out_path} with the cache: choose another --out")


def main(argv=None) -> int:
    args = parse_args(argv)
    inputs = [args.mat, args.utkface, args.lfw, args.female_names, args.male_names, args.detector_model]
    if args.mat:
        root = Path(args.root or "imdb")
        out_path = check_output_file(args.out or root / "cache.csv", inputs)
        table = rows_from_mat(args.mat, args.min_score, args.allow_second_face, root)
    else:
        folder = args.utkface or args.lfw
        root = Path(args.root or Path(folder).resolve().parent)
        out_path = check_output_file(args.out or root / "cache.csv", inputs)
        table = rows_from_utkface(folder, root) if args.utkface \
            else rows_from_lfw(folder, root, args.female_names, args.male_names)
    refuse_image_as_output(out_path, root, table["path"])
    table = drop_implausible_ages(drop_exact_duplicates(table))  # a copy labelled 103 casts doubt on its twin
    if args.detect:
        from faces import FaceDetector

        detector = FaceDetector("yunet", args.detector_model)
        if detector.kind != "yunet":
            raise UserError("--detect needs the YuNet detector (its landmarks frame the faces)")
        table = add_landmarks(table, root, detector)
    write_cache(table, out_path)
    print(f"wrote {len(table)} rows to {out_path}")
    return 0


if __name__ == "__main__":
    run_cli(main, exit_code=2)
