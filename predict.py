"""Age and gender for every face in photos, with the model we ship, offline and without TensorFlow.

    python predict.py photo.jpg                                 # a table: image, face, box, age, gender
    python predict.py photos/ --format jsonl --output ages.jsonl  # streamed, one line per image; --resume
    python predict.py photo.jpg --save annotated.jpg            # a numbered, labelled box on each face
    python predict.py faces/ --detector none                    # each image is already one cropped face
    python predict.py photos/ --min-gender-confidence 0.9       # gender "unknown" where the model is less sure
    python predict.py --fetch-detector                          # download YuNet once (then works offline)

From Python (the repository on sys.path):

    from predict import AgeGenderPredictor
    faces = AgeGenderPredictor().predict("photo.jpg")   # or a PIL image, or an array with color="bgr"|"rgb"

Faces are found with YuNet (or OpenCV's Haar cascade when YuNet can't be had), framed exactly as in
training (faces.frame_face, settings from the model card), and run through the ONNX export of the
Keras model in batches; the card's calibration (calibrate.py) makes the confidences mean what they say.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from annotate import age_gender_fields, annotate, clipped_box, withhold_gender
from confidence import calibrated
from faces import (DETECTION_MAX_SIDE, IMAGE_SUFFIXES, YUNET_CACHE, Face, FaceDetector, Photo, fetch_yunet,
                   frame_face, framing_matrix, is_video, list_images, load_photo, marked_as_annotated, open_photo,
                   quiet_opencv, rescaled_face)
from model_card import open_onnx_session, read_card
from utils import (HelpFormatter, UserError, atomic_path, check_output_file, finite_json, float_between,
                   int_at_least, positive_int, run_cli, same_file, unique_path)

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default" / "model.int8.onnx"
CHUNK_IMAGES = 256  # images predicted together (their face crops go through the model in one batch)
CHUNK_SECONDS = 2.0  # ... or fewer, so that results and progress of slow photos still come every few seconds
MODEL_BATCH = 64  # faces per model run (128 with their mirror images): bounds the network's activations
CHUNK_PIXELS = 100_000_000  # decoded pixels kept at once for --save; bounds memory whatever the photos' size
PREPARE_WORKERS = min(4, os.cpu_count() or 1)  # threads decoding images and framing their faces
PREPARE_AHEAD = 2 * CHUNK_IMAGES  # inputs prepared ahead of the model (only their crops are held)
PROGRESS_MIN_IMAGES = 10  # a progress bar on stderr above this many images
NOT_A_CROP_SIDE = 4  # --detector none: warn when an image is this many times the model's input side
NOT_A_CROP_ASPECT = 1.6  # ... or this far from square
CSV_COLUMNS = ["image", "face", "x", "y", "w", "h", "age", "age_low", "age_high", "gender", "gender_confidence",
               "p_male", "score", "error"]
FORMAT_OF_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}  # --output's name sets the format
SAVE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}  # what every OpenCV 4 writes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders of images, or one video")
    parser.add_argument("--format", choices=["table", "json", "jsonl", "csv"],
                        help="table and jsonl and csv stream as images are done; json is one document at the end "
                             "(default: from --output's suffix, .csv .jsonl or .json, else table)")
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    parser.add_argument("--output", metavar="FILE",
                        help="write results here instead of stdout (jsonl/csv: into FILE.part, renamed when done)")
    parser.add_argument("--resume", action="store_true",
                        help="with --output and jsonl/csv: skip images already in FILE (or an unfinished FILE.part), "
                             "matched by resolved path (photos/a.jpg, ./photos/a.jpg and /home/me/photos/a.jpg "
                             "are one image)")
    parser.add_argument("--save", metavar="DIR_OR_FILE",
                        help="write annotated copies: a folder, or a file for one image (never onto an input)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model.onnx carrying its model card")
    parser.add_argument("--detector", choices=["auto", "yunet", "haar", "none"], default="auto",
                        help="auto: YuNet if it can be had, else Haar with a warning; yunet: YuNet or an error "
                             "(retries a failed download); none: each image is one already-cropped face")
    parser.add_argument("--detector-model", help="YuNet .onnx file (default: $AGE_GENDER_YUNET, else the cache)")
    parser.add_argument("--min-face", type=int_at_least(0), default=0, metavar="PIXELS",
                        help="ignore faces smaller than this")
    parser.add_argument("--min-gender-confidence", type=float_between(0.0, 1.0), default=0.0, metavar="P",
                        help='report gender "unknown" where its confidence is below P (0: always answer)')
    parser.add_argument("--fetch-detector", action="store_true",
                        help=f"download and verify YuNet into {YUNET_CACHE}, then exit")
    video = parser.add_argument_group("video and webcam (video.py): --format table, json or jsonl, --save out.mp4")
    video.add_argument("--webcam", type=int_at_least(0), metavar="INDEX", help="read camera INDEX (0: the first)")
    video.add_argument("--every", type=positive_int, default=1, metavar="N", help="process every N-th frame")
    video.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    args = parser.parse_args(argv)
    if not args.paths and not args.fetch_detector and args.webcam is None:
        parser.error("give images, folders or a video, or --webcam INDEX (or --fetch-detector)")
    named_format = FORMAT_OF_SUFFIX.get(Path(args.output).suffix.lower()) if args.output else None
    if args.format and named_format and args.format != named_format:
        parser.error(f"--format {args.format} but --output {args.output} names {named_format}: "
                     f"drop --format, or give a file name that fits it")
    args.format = args.format or named_format or "table"
    if args.resume and not (args.output and args.format in ("jsonl", "csv")):
        parser.error("--resume needs --output and --format jsonl or csv")
    return args


# --- the model ----------------------------------------------------------------------------------

def mirror_average(run, crops: np.ndarray) -> dict[str, np.ndarray]:
    """Model outputs averaged over each face crop and its mirror image: steadier age and gender for
    twice the compute (on UTKFace validation faces: age MAE -0.1 years, gender accuracy +0.9 points)."""
    outputs = run(np.concatenate([crops, crops[:, :, ::-1]]))
    return {name: (value[:len(crops)] + value[len(crops):]) / 2 for name, value in outputs.items()}


def to_bgr(image, color: str = "bgr") -> np.ndarray:
    """An 8-bit BGR array from a path, a PIL image or a numpy array (color says how a 3- or 4-channel
    array is ordered; greyscale and alpha are converted); UserError for anything else."""
    if color not in ("bgr", "rgb"):
        raise UserError(f"color must be 'bgr' or 'rgb', not {color!r}")
    if isinstance(image, (str, os.PathLike)):
        return load_photo(image)
    if type(image).__module__.startswith("PIL."):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F") and image.size[0] * image.size[1]:
            # 16-bit and float greyscale: PIL's RGB conversion clips them to white; scale to 8 bits instead
            values = np.asarray(image, np.float64)
            full_scale = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
            image = np.round(255 * np.clip(values, 0, full_scale) / full_scale).astype(np.uint8)
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    if not isinstance(image, np.ndarray):
        raise UserError(f"expected a path, a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UserError(f"image array has dtype {image.dtype}: give 8-bit pixels (uint8, 0-255)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.size == 0 or not (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (3, 4)):
        raise UserError(f"image array of shape {image.shape}: expected height x width (grey), x 3 or x 4 channels")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    conversion = {(3, "bgr"): None, (3, "rgb"): cv2.COLOR_RGB2BGR,
                  (4, "bgr"): cv2.COLOR_BGRA2BGR, (4, "rgb"): cv2.COLOR_RGBA2BGR}[image.shape[2], color]
    image = np.ascontiguousarray(image)
    return image if conversion is None else cv2.cvtColor(image, conversion)


class AgeGenderPredictor:
    """Loads the model and the detector once; predicts every face in images (paths, PIL or arrays)."""

    def __init__(self, model_path: str | Path = DEFAULT_MODEL, detector: str = "auto",
                 detector_model: str | None = None, min_face: int = 0, min_gender_confidence: float = 0.0,
                 use_calibration: bool = True):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise UserError(f"model {model_path} not found")
        self.session = open_onnx_session(model_path)
        self.card = read_card(model_path, self.session)  # framing and detector threshold come from here
        self.size = self.card["input"]["size"]
        self.framing = self.card["framing"]
        # calibrate.py's temperatures (None: a model without them, or use_calibration=False, reports as trained)
        self.calibration = self.card.get("calibration") if use_calibration else None
        self.min_gender_confidence = min_gender_confidence
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self._check_network(model_path)
        self.detector = None if detector == "none" else FaceDetector(
            detector, detector_model, score_threshold=self.card["detector"]["score_threshold"], min_face=min_face)
        self.warned = False
        self.warning_lock = threading.Lock()  # faces are found in several threads; warn once all the same

    def warn_once(self, message: str) -> None:
        """One warning on stderr for this predictor's run, whichever image or frame comes first."""
        with self.warning_lock:
            if not self.warned:
                print(f"warning: {message}", file=sys.stderr)
                self.warned = True

    def _check_network(self, model_path: Path) -> None:
        """One clear line when a valid ONNX file is some other network than an age/gender model."""
        inputs, outputs = self.session.get_inputs(), {o.name: o.shape for o in self.session.get_outputs()}
        input_shape = inputs[0].shape if len(inputs) == 1 else None
        fits = (input_shape is not None and len(input_shape) == 4 and list(input_shape[1:]) == [self.size, self.size, 3]
                and len(outputs.get("age", [])) == 2 and outputs["age"][1] == 101
                and len(outputs.get("gender", [])) == 2 and outputs["gender"][1] == 1)
        if not fits:
            found = ", ".join(f"{i.name} {i.shape}" for i in inputs) + " -> " + \
                ", ".join(f"{name} {shape}" for name, shape in outputs.items())
            expected = f"N x {self.size} x {self.size} x 3 -> age N x 101, gender N x 1"
            raise UserError(f"{model_path} is not an age/gender model: expected {expected}; found {found}")

    def find_faces(self, image: np.ndarray, name: str = "image", reduction: int = 1) -> list[Face]:
        """The faces in image, in the photo's own pixels (image: the photo at 1/reduction of its size)."""
        if self.detector is not None:
            return self.detector.detect(image, reduction)
        height, width = image.shape[:2]
        longer, shorter = max(height, width), min(height, width)
        if longer > NOT_A_CROP_SIDE * self.size or longer > NOT_A_CROP_ASPECT * shorter:
            self.warn_once(f"--detector none takes each image as one cropped face, but {name} is "
                           f"{width}x{height} pixels, not a face crop: use a detector for photos")
        return [Face((0.0, 0.0, float(width), float(height)), None, 1.0, "yunet")]

    def predict_faces(self, crops: np.ndarray) -> list[dict]:
        """Age and gender for framed face crops (N x size x size x 3, BGR uint8)."""
        if not len(crops):
            return []
        batches = [mirror_average(self.run_model, crops[start:start + MODEL_BATCH])
                   for start in range(0, len(crops), MODEL_BATCH)]
        age_probs = np.concatenate([batch["age"] for batch in batches])
        male_probs = np.concatenate([batch["gender"][:, 0] for batch in batches])
        return self.face_fields(age_probs, male_probs)

    def face_fields(self, age_probs, male_probs, genders: list[str | None] | None = None) -> list[dict]:
        """Each face's age and gender fields from its averaged model outputs (N x 101 age probabilities,
        N P(male): over a face and its mirror image, or over a video track's frames), with the gender given
        where `genders` holds one (a video track's, held until the evidence is clear). The one place where
        the card's calibration and min_gender_confidence apply, for photos, serve.py and video alike."""
        age_probs, male_probs = calibrated(np.asarray(age_probs), np.asarray(male_probs), self.calibration)
        genders = genders or [None] * len(male_probs)
        return [withhold_gender(age_gender_fields(probs, male, gender), self.min_gender_confidence)
                for probs, male, gender in zip(age_probs, male_probs, genders)]

    def run_model(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs ("age": N x 101 probabilities, "gender": N x 1 P(male)) for framed crops."""
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: crops.astype(np.float32)})))

    def frame(self, image, color: str = "bgr") -> tuple[list[Face], np.ndarray]:
        """The faces in an image and their crops, framed as the model was trained."""
        _, faces, crops = self._frame_bgr(to_bgr(image, color))
        return faces, crops

    def _frame_bgr(self, image: np.ndarray, name: str = "image") -> tuple[tuple, list[Face], np.ndarray]:
        """(the image's shape, its faces, their crops): what _describe takes for each image."""
        return self._frame_photo(Photo(image, 1, image.shape, b"", name))

    def _frame_photo(self, photo: Photo) -> tuple[tuple, list[Face], np.ndarray]:
        """_frame_bgr for a photo that may be decoded at reduced scale. A face is cropped from the reduced
        pixels when they hold all the detail its crop keeps (the crop shrinks the photo at least
        `reduction` times), else from the full-size pixels, decoded once for the photo's first such face."""
        faces = self.find_faces(photo.pixels, photo.name, photo.reduction)
        full, crops = None, []
        for face in faces:
            shrink = np.sqrt(abs(np.linalg.det(framing_matrix(face, self.size, self.framing)[:, :2])))
            if shrink * photo.reduction <= 1:
                crops.append(frame_face(photo.pixels, rescaled_face(face, 1 / photo.reduction), self.size,
                                        self.framing))
            else:
                full = photo.full_pixels() if full is None else full
                crops.append(frame_face(full, face, self.size, self.framing))
        return photo.shape, faces, np.stack(crops) if crops else np.zeros((0, self.size, self.size, 3), np.uint8)

    def predict_many(self, images: Iterable, color: str = "bgr") -> list[list[dict]]:
        """Every face of every image (paths, PIL images or arrays), the faces through the model together.
        An image that cannot be read raises UserError naming it, for the whole call (the command line
        instead reports each bad file and goes on): to go past bad files, call predict() per image."""
        if isinstance(images, (str, bytes, os.PathLike)) or type(images).__module__.startswith("PIL.") or \
                isinstance(images, np.ndarray) and images.ndim < 4:
            raise UserError(f"predict_many takes a list of images, not one {type(images).__name__}: "
                            f"for one image call predict()")
        return self._describe([self._frame_bgr(to_bgr(image, color)) for image in images])

    def _describe(self, framed: list[tuple[tuple, list[Face], np.ndarray]]) -> list[list[dict]]:
        """The face dicts (the README's schema) for (image shape, faces, crops) of several images."""
        crops = [crops for _, _, crops in framed]
        predictions = iter(self.predict_faces(np.concatenate(crops)) if crops else [])
        return [[{"index": index, "box": clipped_box(face.box, shape[1], shape[0]), "score": round(face.score, 3),
                  **next(predictions)} for index, face in enumerate(faces)]
                for shape, faces, _ in framed]

    def predict(self, image, color: str = "bgr") -> list[dict]:
        """Every face in one image, largest first: index, box [x, y, w, h], score, age, age_range, gender,
        gender_confidence, p_male. image: a path, a PIL image or an array (BGR unless color="rgb")."""
        return self.predict_many([image], color)[0]


# --- running over many files --------------------------------------------------------------------

def load_entry(path: str, detection_side: int | None = None) -> tuple[dict, Photo | None]:
    """The JSON object for one input and its decoded photo (see faces.open_photo), or the object with an
    "error" and None. Every failure stays with its image: one bad file never sinks the batch."""
    try:
        if Path(path).is_dir():
            raise UserError(f"{path}: folder holds no images")
        return {"image": path, "faces": []}, open_photo(path, detection_side)
    except UserError as error:
        return {"image": path, "error": str(error).removeprefix(f"{path}: ")}, None
    except Exception as error:  # MemoryError, an OpenCV limit...: still this image's problem alone
        return failed(path, "cannot decode", error), None


def failed(path: str, what: str, error: Exception) -> dict:
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return {"image": path, "error": f"{what}: {reason}"}


def prepared(predictor: AgeGenderPredictor, path: str, keep_image: bool
             ) -> tuple[dict, tuple | None, np.ndarray | None]:
    """One input decoded and its faces found and framed: (its JSON object, (image shape, faces, crops)
    or None if it failed, the image itself if keep_image). Runs in a worker thread."""
    # Large JPEGs are decoded at the detector's scale unless the full picture is kept for --save.
    detection_side = DETECTION_MAX_SIDE if predictor.detector is not None and not keep_image else None
    entry, photo = load_entry(path, detection_side)
    if photo is None:
        return entry, None, None
    try:
        framed = predictor._frame_photo(photo)
    except Exception as error:
        return failed(entry["image"], "face detection failed", error), None, None
    return entry, framed, photo.pixels if keep_image else None


def prepared_in_order(predictor: AgeGenderPredictor, paths: list[str], keep_images: bool) -> Iterator[tuple]:
    """prepared() of each path, in order, by a pool of threads (OpenCV releases the GIL, as does ONNX
    Runtime while the model runs on earlier faces). At most `ahead` inputs are in flight: few when
    their images are kept, since photos can be large."""
    ahead = PREPARE_WORKERS if keep_images else PREPARE_AHEAD
    pool = ThreadPoolExecutor(PREPARE_WORKERS)
    try:
        pending = collections.deque(pool.submit(prepared, predictor, path, keep_images) for path in paths[:ahead])
        for position in range(len(paths)):
            result = pending.popleft().result()
            if position + ahead < len(paths):
                pending.append(pool.submit(prepared, predictor, paths[position + ahead], keep_images))
            yield result
    finally:  # Ctrl-C, a full disk or a closed pipe: drop the queue rather than prepare all of it first
        pool.shutdown(wait=False, cancel_futures=True)


def predict_files(predictor: AgeGenderPredictor, paths: list[str], saver: AnnotationSaver | None = None
                  ) -> Iterator[dict]:
    """One result per path, in order, as chunks finish. Only face crops are kept between decoding and
    the model, plus (for --save) the chunk's images, at most CHUNK_PIXELS of them."""
    chunk, pixels, started = [], 0, time.monotonic()
    for entry, framed, image in prepared_in_order(predictor, paths, keep_images=saver is not None):
        chunk.append((entry, framed, image))
        pixels += image.size // 3 if image is not None else 0
        if len(chunk) >= CHUNK_IMAGES or pixels >= CHUNK_PIXELS or time.monotonic() - started > CHUNK_SECONDS:
            yield from finish_chunk(predictor, chunk, saver)
            chunk, pixels, started = [], 0, time.monotonic()
    yield from finish_chunk(predictor, chunk, saver)


def finish_chunk(predictor: AgeGenderPredictor, chunk: list, saver: AnnotationSaver | None) -> Iterator[dict]:
    faces_per_image = iter(predictor._describe([framed for _, framed, _ in chunk if framed is not None]))
    for entry, framed, image in chunk:
        if framed is not None:
            entry["faces"] = next(faces_per_image)
            if image is not None:
                try:
                    saver.save(image, entry["faces"], entry["image"])
                except Exception as error:  # a full disk or a read-only folder: the results still count
                    entry = failed(entry["image"], "annotated copy not written", error)
        yield entry


# --- annotated copies ---------------------------------------------------------------------------

class AnnotationSaver:
    """Writes annotated copies: to one file (a single input), or as NAME_annotated.jpg in a folder with
    colliding names numbered (utils.unique_path). Never onto an input file."""

    def __init__(self, save: str, inputs: list[str]):
        self.target = Path(save)
        suffix = self.target.suffix.lower()
        image_suffixes = IMAGE_SUFFIXES | SAVE_SUFFIXES | {".heic"}
        names_an_image = suffix in image_suffixes and not self.target.is_dir()
        if names_an_image and suffix not in SAVE_SUFFIXES:
            raise UserError(f"--save {save}: cannot write {suffix} images; give a file ending in "
                            f"{', '.join(sorted(SAVE_SUFFIXES))}, or a folder")
        self.single_file = len(inputs) == 1 and names_an_image
        if self.single_file:
            check_output_file(self.target, inputs)
        elif names_an_image or (self.target.exists() and not self.target.is_dir()):
            raise UserError(f"--save {save}: for several images give a folder, not a file")
        self.taken: set[Path] = set()
        self.input_files = {file_identity(path) for path in inputs} - {None}

    def save(self, image: np.ndarray, faces: list[dict], source: str) -> Path:
        if self.single_file:
            target = self.target
        else:  # a name in the folder that is no link, no input and not yet written by this run
            target = unique_path(self.target / f"{Path(source).stem}_annotated.jpg", self.taken)
            while target.is_symlink() or file_identity(target) in self.input_files:
                target = unique_path(target, self.taken)
        with atomic_path(target) as temp_path:
            if self.single_file:
                if not cv2.imwrite(str(temp_path), annotate(image, faces)):
                    raise UserError(f"cannot write {target}")
            else:  # marked, so that a later run over this folder leaves the copy out (faces.list_images)
                encoded, jpeg = cv2.imencode(".jpg", annotate(image, faces))
                if not encoded:
                    raise UserError(f"cannot write {target}")
                temp_path.write_bytes(marked_as_annotated(jpeg.tobytes()))
        return target


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, None otherwise: the same file whatever the path."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


# --- output formats -----------------------------------------------------------------------------

def table_widths(paths: list[str]) -> dict[str, int]:
    return {"image": max([len("image")] + [len(path) for path in paths]), "box": len("1234, 1234, 1234, 1234")}


def table_row(widths: dict[str, int], image: str, *cells: str) -> str:
    """One line of the table; the header and every row share these column widths."""
    columns = [(widths["image"], "<"), (4, ">"), (widths["box"], "<"), (5, ">"), (7, ">"), (7, "<"), (4, ">")]
    text = "  ".join(f"{cell:{align}{width}}" for cell, (width, align) in zip((image, *cells), columns))
    return text.rstrip()


def table_lines(result: dict, widths: dict[str, int]) -> list[str]:
    if "error" in result:
        return [table_row(widths, result["image"], "", f"error: {result['error']}")]
    if not result["faces"]:
        return [table_row(widths, result["image"], "", "no face found")]
    return [table_row(widths, result["image"], str(face["index"]), ", ".join(map(str, face["box"])),
                      f"{face['age']:.1f}", f"{face['age_range'][0]:.0f}-{face['age_range'][1]:.0f}",
                      face["gender"], f"{face['gender_confidence']:.2f}")
            for face in result["faces"]]


def csv_rows(result: dict) -> list[list]:
    if "error" in result or not result["faces"]:
        return [[result["image"]] + [""] * (len(CSV_COLUMNS) - 2) + [result.get("error", "")]]
    return [[result["image"], face["index"], *face["box"], face["age"], *face["age_range"], face["gender"],
             face["gender_confidence"], face["p_male"], face["score"], ""] for face in result["faces"]]


class ResultWriter:
    """Writes results in one format as they come (json: one document at close)."""

    def __init__(self, out: IO[str], fmt: str, paths: list[str], header: bool = True):
        self.out, self.format, self.held = out, fmt, []
        self.widths = table_widths(paths)
        self.csv = csv.writer(out) if fmt == "csv" else None
        if header and fmt == "table":
            self.out.write(table_row(self.widths, "image", "face", "box (x, y, w, h)", "age", "range", "gender",
                                     "conf") + "\n")
        if header and fmt == "csv":
            self.csv.writerow(CSV_COLUMNS)

    def write(self, result: dict) -> None:
        if self.format == "json":
            self.held.append(result)
            return
        if self.format == "jsonl":
            self.out.write(finite_json(result) + "\n")
        elif self.format == "csv":
            self.csv.writerows(json_free_rows(csv_rows(result)))
        else:
            self.out.write("\n".join(table_lines(result, self.widths)) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.format == "json":
            self.out.write(finite_json(self.held, indent=2) + "\n")
        self.out.flush()


def json_free_rows(rows: list[list]) -> list[list]:
    """CSV cells with NaN or infinity left empty, as finite_json does for JSON."""
    return [["" if isinstance(cell, float) and not math.isfinite(cell) else cell for cell in row] for row in rows]


def images_done(part_path: Path, fmt: str) -> set[str]:
    """The images an earlier run already wrote into part_path, dropping a last line cut short."""
    data = part_path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        part_path.write_bytes(complete)
    text = complete.decode("utf-8", errors="surrogateescape")
    refusal = UserError(f"{part_path} is not {fmt} output of predict.py: remove it, or choose another --output")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if rows and rows[0] != CSV_COLUMNS:
            raise refusal
        return {row[0] for row in rows[1:] if row}
    done = set()
    for line in text.splitlines():
        try:
            done.add(json.loads(line)["image"])
        except (ValueError, KeyError, TypeError):
            raise refusal from None
    return done


def images_to_do(paths: list[str], done: set[str]) -> list[str]:
    """The paths whose images are not among those done, matched by resolved path: photos/a.jpg,
    ./photos/a.jpg and /home/me/photos/a.jpg are one image. A relative path written by a run started in
    another folder names no file from here; it matches the image whose path ends in the same folders."""
    if not done:
        return paths
    done_files = {os.path.realpath(path) for path in done}
    endings: dict[str, set[tuple[str, ...]]] = collections.defaultdict(set)  # by file name: few to compare
    for path in done:
        if not os.path.isabs(path) and not os.path.exists(path):
            parts = tuple(part for part in Path(os.path.normpath(path)).parts if part != "..")
            if parts:
                endings[parts[-1]].add(parts)
    todo = []
    for path in paths:
        resolved = os.path.realpath(path)
        parts = Path(resolved).parts
        if resolved not in done_files and not any(parts[-len(end):] == end for end in endings.get(parts[-1], ())):
            todo.append(path)
    return todo


@contextlib.contextmanager
def open_results(output: str | None, fmt: str, resume: bool) -> Iterator[tuple[IO[str], set[str], bool]]:
    """(stream, images already done, whether the stream continues earlier output).

    jsonl and csv go to FILE.part line by line, so an interrupted run keeps what it did (--resume
    continues it); table and json go to a temporary file. Either is renamed onto FILE only when the
    run completes."""
    if output is None:
        yield sys.stdout, set(), False
        return
    output = Path(output)
    if fmt not in ("jsonl", "csv"):
        with atomic_path(output) as temp_path, \
                open(temp_path, "w", newline="", errors="surrogateescape") as out:  # any file name survives
            yield out, set(), False
        return
    part_path = output.with_name(output.name + ".part")  # main() checked it as it checks FILE
    copied = resume and not part_path.exists() and output.is_file()
    if copied:
        part_path.write_bytes(output.read_bytes())  # continue a copy: FILE stays whole until the rename
    try:
        done = images_done(part_path, fmt) if resume and part_path.exists() else set()
    except UserError:
        if copied:
            part_path.unlink()
            raise UserError(f"{output} is not {fmt} output of predict.py: choose another --output") from None
        raise
    continuing = resume and part_path.exists() and part_path.stat().st_size > 0  # a header at least
    part_path.parent.mkdir(parents=True, exist_ok=True)
    with open(part_path, "a" if continuing else "w", newline="", errors="surrogateescape") as out:
        yield out, done, continuing
    os.replace(part_path, output)


# --- command line -------------------------------------------------------------------------------

def progress_bar(images: int):
    """tqdm on stderr above PROGRESS_MIN_IMAGES images; below, tqdm is not even imported (its import is
    a tenth of a one-photo run's start-up) and a silent bar with the same write() and update() stands in."""
    if images <= PROGRESS_MIN_IMAGES:
        return contextlib.nullcontext(SilentBar())
    from tqdm import tqdm

    return tqdm(total=images, unit="image", file=sys.stderr)


class SilentBar:
    @staticmethod
    def write(message: str, file: IO[str]) -> None:
        print(message, file=file)

    def update(self) -> None:
        pass


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_opencv()
    if args.fetch_detector:
        print(f"YuNet face detector ready: {fetch_yunet(timeout_s=60, fetching=True)}")
        if not args.paths:
            return 0
    video_run = args.webcam is not None or any(is_video(path) for path in args.paths)
    if video_run:
        import video  # imported here: a photo run does without its start-up cost

        video.check_arguments(args)
    elif args.every != 1 or args.max_frames:
        print("warning: --every and --max-frames are for videos and the webcam: each photo is done once",
              file=sys.stderr)
    paths = args.paths if video_run else list_images(args.paths)
    if args.output:
        check_output_file(args.output, paths)
        check_output_file(args.output + ".part", paths)  # where jsonl and csv grow until the run is done
        if args.save and same_file(args.save, args.output):
            raise UserError(f"--save and --output are both {args.output}: give each its own path")
    saver = AnnotationSaver(args.save, paths) if args.save and not video_run else None
    predictor = AgeGenderPredictor(args.model, args.detector, args.detector_model, args.min_face,
                                   args.min_gender_confidence)
    if video_run:
        with open_results(args.output, args.format, resume=False) as (out, _, _):
            return video.run(args, predictor, out)
    failed = 0
    with open_results(args.output, args.format, args.resume) as (out, done, continuing):
        todo = images_to_do(paths, done)
        writer = ResultWriter(out, args.format, todo, header=not continuing)
        with progress_bar(len(todo)) as bar:
            for result in predict_files(predictor, todo, saver):
                writer.write(result)
                if "error" in result:
                    failed += 1
                    bar.write(f"error: {result['image']}: {result['error']}", file=sys.stderr)
                bar.update()
        writer.close()
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
