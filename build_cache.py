"""Turn dataset metadata into cache.csv: one row per usable face with its age, gender and face box.

    python build_cache.py --mat imdb/wiki_crop/wiki.mat --root imdb --out imdb/cache.csv
    python build_cache.py --utkface data/UTKFace --out data/utkface.csv --detect   # + YuNet box and landmarks

Columns: path (relative to --root), age (years), gender (1 = male, 0 = female, IMDB-WIKI's coding),
face_x1, face_y1, face_x2, face_y2 (pixels; empty when the image is the face), face_score, and with
--detect the five YuNet landmarks (right_eye_x ... mouth_left_y) that frame the face for the model.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.io
from tqdm import tqdm

from utils import UserError, atomic_path, run_cli

if TYPE_CHECKING:
    from faces import FaceDetector

BOX_COLUMNS = ["face_x1", "face_y1", "face_x2", "face_y2"]
# YuNet's five landmarks in its own order (subject's right eye first, on the image's left)
LANDMARK_COLUMNS = [
    f"{part}_{axis}" for part in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left") for axis in ("x", "y")
]

CACHE_COLUMNS = ["path", "age", "gender", *BOX_COLUMNS, "face_score"]
MAT_FIELDS = ("dob", "photo_taken", "full_path", "gender", "face_location", "face_score", "second_face_score")
UNIX_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
UTKFACE_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>[01])_(?P<race>\d+)_(?P<time>\d+)\.jpg\.chip\.jpg$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mat", help="IMDB-WIKI metadata file (wiki.mat or imdb.mat)")
    source.add_argument("--utkface", help="folder of UTKFace images, labels read from file names")
    parser.add_argument("--root", help="paths in the cache are relative to this (default: imdb for --mat, "
                                       "the UTKFace folder's parent for --utkface)")
    parser.add_argument("--out", help="output CSV (default: ROOT/cache.csv)")
    parser.add_argument("--min-score", type=float, default=1.0, help="minimum face_score to keep (default: 1.0)")
    parser.add_argument("--allow-second-face", action="store_true", help="keep images where a second face was found")
    parser.add_argument("--detect", action="store_true",
                        help="run YuNet over the images (must be on disk) to add landmarks for framing")
    parser.add_argument("--detector-model", help="YuNet .onnx file (default: $AGE_GENDER_YUNET or the cache)")
    return parser.parse_args(argv)


def load_mat(mat_path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """The metadata struct's name (wiki or imdb) and its fields as flat arrays."""
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise UserError(f"{mat_path}: no such file")
    try:
        contents = scipy.io.loadmat(mat_path)
    except Exception as error:
        raise UserError(f"{mat_path} is not a MATLAB .mat file ({str(error).splitlines()[0]})") from None
    names = [name for name in ("wiki", "imdb") if name in contents]
    if not names:
        raise UserError(f"{mat_path} holds no 'wiki' or 'imdb' struct")
    struct = contents[names[0]]
    missing = [field for field in MAT_FIELDS if struct.dtype.names is None or field not in struct.dtype.names]
    if missing:
        raise UserError(f"{mat_path}: struct '{names[0]}' lacks fields {', '.join(missing)}")
    record = struct[0, 0]
    return names[0], {field: np.ravel(record[field]) for field in MAT_FIELDS}


def age_at_photo(dob_datenum: np.ndarray, photo_taken: np.ndarray) -> np.ndarray:
    """Age in years, assuming the photo was taken mid-year: born in July or later counts one year less."""
    days_since_epoch = dob_datenum.astype(np.int64) - 366 - UNIX_EPOCH_ORDINAL  # MATLAB datenum -> ordinal
    birth = days_since_epoch.astype("datetime64[D]")
    birth_year = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    birth_month = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    return photo_taken.astype(np.int64) - birth_year - (birth_month >= 7)


def rows_from_mat(mat_path: str, min_score: float, allow_second_face: bool) -> pd.DataFrame:
    struct_name, fields = load_mat(mat_path)
    boxes = np.concatenate(fields["face_location"]).reshape(-1, 4).astype(np.float64)  # each cell holds 1 x 4
    table = pd.DataFrame({
        "path": [f"{struct_name}_crop/{path}" for path in np.concatenate(fields["full_path"])],
        "age": age_at_photo(fields["dob"], fields["photo_taken"]),
        "gender": fields["gender"].astype(np.float64),
        **dict(zip(BOX_COLUMNS, boxes.T)),
        "face_score": fields["face_score"].astype(np.float64),
    })
    print(f"{mat_path}: {len(table)} entries in '{struct_name}'")
    rules = {
        f"face_score < {min_score} (no face found, or a weak one)": table.face_score >= min_score,
        "a second face in the image": table.face_score.notna() if allow_second_face
        else pd.isna(fields["second_face_score"].astype(np.float64)),
        "gender unknown": table.gender.notna(),
        "age outside 0-100": table.age.between(0, 100),
    }
    keep = np.ones(len(table), bool)
    for rule, passes in rules.items():
        dropped = keep & ~np.asarray(passes)
        print(f"  dropped {dropped.sum():>6} rows: {rule}")
        keep &= ~dropped
    table = table[keep].astype({"gender": np.int64})
    print(f"  kept    {len(table):>6} rows")
    return table


def rows_from_utkface(folder: str, root: Path) -> pd.DataFrame:
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: no such folder")
    folder, root = Path(folder).resolve(), root.resolve()
    if not folder.is_relative_to(root):
        raise UserError(f"{folder} is not inside --root {root}")
    rows, malformed = [], []
    for image_path in sorted(folder.iterdir()):
        match = UTKFACE_NAME.match(image_path.name)
        if match is None:
            malformed.append(image_path.name)
            continue
        # UTKFace codes 0 = male, 1 = female; the cache uses IMDB-WIKI's 1 = male.
        rows.append((image_path.relative_to(root).as_posix(), int(match["age"]), 1 - int(match["gender"])))
    print(f"{folder}: {len(rows)} faces, {len(malformed)} malformed names skipped"
          + (f" (e.g. {', '.join(malformed[:3])})" if malformed else ""))
    table = pd.DataFrame(rows, columns=["path", "age", "gender"])
    for column in [*BOX_COLUMNS, "face_score"]:
        table[column] = np.nan  # the image is the face: no box
    return table


def add_landmarks(table: pd.DataFrame, root: Path, detector: FaceDetector) -> pd.DataFrame:
    """Detect each image's face once. A face box from the metadata picks the face and is kept; images
    without one (UTKFace chips) take YuNet's box. Chips with no face are dropped: predict.py could not
    find them either, so they would teach a framing the model never sees."""
    from faces import read_training_image  # OpenCV is only needed here, not for the metadata

    landmarks = np.full((len(table), 10), np.nan)
    boxes = table[BOX_COLUMNS].to_numpy(np.float64).copy()
    scores = table["face_score"].to_numpy(np.float64).copy()
    unreadable = 0
    for row, path in enumerate(tqdm(table["path"], desc="detect faces", unit="image")):
        image, _ = read_training_image(root / path)
        if image is None:
            unreadable += 1
            continue
        faces = detector.detect(image)
        if not np.isnan(boxes[row, 0]):  # keep the face whose centre lies inside the metadata box
            x1, y1, x2, y2 = boxes[row]
            faces = [f for f in faces if x1 <= f.box[0] + f.box[2] / 2 <= x2 and y1 <= f.box[1] + f.box[3] / 2 <= y2]
        elif faces:
            x, y, width, height = faces[0].box
            boxes[row], scores[row] = (x, y, x + width, y + height), faces[0].score
        if faces:
            landmarks[row] = faces[0].landmarks.ravel()
    table = table.copy()
    table[BOX_COLUMNS], table["face_score"], table[LANDMARK_COLUMNS] = boxes, scores, landmarks
    found = ~np.isnan(landmarks[:, 0])
    print(f"  landmarks found for {found.sum()} of {len(table)} images ({unreadable} unreadable)")
    no_box = np.isnan(boxes[:, 0])
    if no_box.any():
        print(f"  dropped {no_box.sum():>6} rows: no face detected in an image that has no face box")
    return table[~no_box]


def load_cache(cache_path: str | Path) -> pd.DataFrame:
    """Read cache.csv; columns added by later versions (landmarks) are filled with NaN for older files."""
    try:
        table = pd.read_csv(cache_path)
    except FileNotFoundError:
        raise UserError(f"{cache_path}: no such file (build it with build_cache.py)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{cache_path} is not a readable CSV: {error}") from None
    missing = {"path", "age", "gender"} - set(table.columns)
    if missing:
        raise UserError(f"{cache_path} lacks columns {', '.join(sorted(missing))}")
    for column in [*BOX_COLUMNS, "face_score", *LANDMARK_COLUMNS]:
        if column not in table:
            table[column] = np.nan
    return table.reset_index(drop=True)


def write_cache(table: pd.DataFrame, out_path: str | Path) -> None:
    with atomic_path(out_path) as temp_path:
        table.to_csv(temp_path, index=False, float_format="%.9g")  # exact for float32 detector output


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mat:
        root = Path(args.root or "imdb")
        table = rows_from_mat(args.mat, args.min_score, args.allow_second_face)
    else:
        root = Path(args.root or Path(args.utkface).resolve().parent)
        table = rows_from_utkface(args.utkface, root)
    if args.detect:
        from faces import FaceDetector

        detector = FaceDetector("yunet", args.detector_model)
        if detector.kind != "yunet":
            raise UserError("--detect needs the YuNet detector (its landmarks frame the faces)")
        table = add_landmarks(table, root, detector)
    out_path = Path(args.out or root / "cache.csv")
    write_cache(table, out_path)
    print(f"wrote {len(table)} rows to {out_path}")
    return 0


if __name__ == "__main__":
    run_cli(main, exit_code=2)
