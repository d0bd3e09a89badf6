"""Faces: read photos safely, find faces (YuNet or Haar), and frame each face for the model.

One framing function, `frame_face`, serves training (generator.py), evaluation and prediction, so the
model always sees the same picture of a face. With the detector's five landmarks it applies the
similarity transform that puts eyes, nose and mouth at FACE_TEMPLATE; without them it takes a square
crop around the face box with a margin.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils import UserError

# Where YuNet's five landmarks sit in a tightly framed face, as fractions of its side (right eye, left
# eye, nose tip, right and left mouth corner, subject's right on the image's left). These are the
# median YuNet landmarks over UTKFace's aligned 200x200 chips, made left-right symmetric.
FACE_TEMPLATE = np.array(
    [[0.3047, 0.2917], [0.6953, 0.2917], [0.5000, 0.5017], [0.3356, 0.6825], [0.6644, 0.6825]], dtype=np.float64
)
# Square crop around a face box when there are no landmarks: side = max(w, h) * (1 + 2 * margin), centre
# moved down by shift_y box sides. Measured on UTKFace chips so each detector's crop matches the chip;
# "metadata" is IMDB-WIKI's own face_location (the DEX crops keep 40% around it).
BOX_FRAMING = {
    "yunet": {"margin": 0.0, "shift_y": 0.0},
    "haar": {"margin": 0.1, "shift_y": 0.075},
    "metadata": {"margin": 0.4, "shift_y": 0.0},
}


def make_framing(method: str = "landmarks", context: float = 1.0) -> dict:
    """How faces are framed, as a model card records it. context > 1 zooms out from the tight,
    chip-like crop so hair, ears and jaw line are in (1.25: the face takes 80% of the side).
    method "box" ignores landmarks: for models trained on face boxes alone (IMDB-WIKI metadata)."""
    if method not in ("landmarks", "box"):
        raise ValueError(f"unknown framing method {method!r}")
    template = 0.5 + (FACE_TEMPLATE - 0.5) / context
    box_framing = {source: {"margin": (context * (1 + 2 * entry["margin"]) - 1) / 2, "shift_y": entry["shift_y"]}
                   for source, entry in BOX_FRAMING.items()}
    return {"method": method, "context": context, "template": template.round(6).tolist(), "box_framing": box_framing}


DEFAULT_FRAMING = make_framing()

YUNET_FILE = "face_detection_yunet_2026may.onnx"
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
YUNET_URL = f"https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/{YUNET_FILE}"
YUNET_ENV = "AGE_GENDER_YUNET"  # path to the YuNet .onnx file, for offline machines
YUNET_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "age-gender" / YUNET_FILE
DETECTION_SCORE = 0.6  # YuNet's confidence threshold; below it faces are mostly false alarms
DETECTION_MAX_SIDE = 1280  # huge photos are detected on a copy this size, then boxes are scaled back
MAX_IMAGE_PIXELS = 100_000_000  # refuse absurd dimensions before decoding (a bomb would need gigabytes)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"}


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x, y, width, height in image pixels
    landmarks: np.ndarray | None  # 5 x 2 pixel positions, or None (Haar, or a box from metadata)
    score: float
    box_source: str = "yunet"  # which BOX_FRAMING entry applies when there are no landmarks


# --- reading images -----------------------------------------------------------------------------

def load_photo(path: str | os.PathLike) -> np.ndarray:
    """Decode a user's photo to 8-bit BGR, upright per EXIF; raise UserError with the reason if it can't."""
    # PIL reads only the header here: the dimensions are checked before any pixels are decoded.
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path}: empty file")
    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, with a clearer message
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:
        raise UserError(f"{path}: not an image this tool can read") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"{path}: {width}x{height} pixels is too large (limit {MAX_IMAGE_PIXELS:,} pixels)")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise UserError(f"{path}: truncated JPEG (no end-of-image marker)")
    # IMREAD_COLOR applies EXIF orientation and turns grey, RGBA and 16-bit images into 8-bit BGR.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: image data could not be decoded")
    return image


def read_training_image(path: str | os.PathLike, max_reduction: float = 1.0) -> tuple[np.ndarray | None, int]:
    """Fast decode for training: (BGR image or None if unreadable, the reduction factor applied).

    JPEGs are decoded at 1/2, 1/4 or 1/8 size inside libjpeg when max_reduction allows, which is
    several times cheaper than decoding full size and shrinking afterwards.
    """
    reduce_modes = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
    factor = next((f for f in (8, 4, 2) if f <= max_reduction), 1)
    image = cv2.imread(str(path), reduce_modes.get(factor, cv2.IMREAD_COLOR))
    return image, factor


def list_images(paths: list[str]) -> list[str]:
    """Expand folders into their image files (sorted); files are kept as given, even if not images."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(str(p) for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            expanded.extend(found or [path])  # a folder without images stays, to be reported as an error
        else:
            expanded.append(path)
    return expanded


# --- framing ------------------------------------------------------------------------------------

def similarity_from_landmarks(landmarks: np.ndarray, size: int, template: np.ndarray = FACE_TEMPLATE) -> np.ndarray:
    """2x3 least-squares similarity (rotation, scale, shift; no reflection) taking landmarks to the template."""
    template = np.asarray(template, np.float64)
    source = landmarks[:, 0] + 1j * landmarks[:, 1]
    target = (template[:, 0] + 1j * template[:, 1]) * size
    source_centred, target_centred = source - source.mean(), target - target.mean()
    rotation_scale = np.vdot(source_centred, target_centred) / np.vdot(source_centred, source_centred)
    shift = target.mean() - rotation_scale * source.mean()
    a, b = rotation_scale.real, rotation_scale.imag
    return np.array([[a, -b, shift.real], [b, a, shift.imag]])


def similarity_from_box(box: tuple[float, float, float, float], size: int, framing: dict) -> np.ndarray:
    x, y, width, height = box
    side = max(width, height) * (1 + 2 * framing["margin"])
    centre_x = x + width / 2
    centre_y = y + height / 2 + framing["shift_y"] * max(width, height)
    scale = size / side
    return np.array([[scale, 0, size / 2 - scale * centre_x], [0, scale, size / 2 - scale * centre_y]])


def jitter_matrices(rng: np.random.Generator, count: int, size: int, scale: float = 0.08, shift: float = 0.05,
                    degrees: float = 10.0, flip: bool = True) -> np.ndarray:
    """count random 3x3 similarities about the crop centre (zoom, rotation, shift, and a mirror half the
    time): they teach the model to tolerate detector noise. Drawn for a whole batch at once."""
    zoom = np.exp(rng.uniform(-scale, scale, count))
    angle = np.deg2rad(rng.uniform(-degrees, degrees, count))
    mirror = np.where(rng.random(count) < 0.5, -1.0, 1.0) if flip else np.ones(count)
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    dx, dy = rng.uniform(-shift, shift, (2, count)) * size
    centre = size / 2
    matrices = np.zeros((count, 3, 3))
    # mirror(x) after rotate-zoom about the centre: rows are [m*cos, -m*sin, ...], [sin, cos, ...]
    matrices[:, 0, 0], matrices[:, 0, 1] = mirror * cos, -mirror * sin
    matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
    matrices[:, 0, 2] = centre - matrices[:, 0, 0] * centre - matrices[:, 0, 1] * centre + dx
    matrices[:, 1, 2] = centre - sin * centre - cos * centre + dy
    matrices[:, 2, 2] = 1
    return matrices


def frame_face(image: np.ndarray, face: Face, size: int, framing: dict | None = None,
               jitter: np.ndarray | None = None, canvas: int | None = None) -> np.ndarray:
    """The model's view of one face: a size x size BGR crop. Parts outside the photo are mirrored in,
    which looks like more of the scene rather than a tell-tale smear.

    framing (from the model card; default DEFAULT_FRAMING) gives the landmark template and the box
    margins; with method "box" the landmarks are not used. canvas > size centres the same crop on a
    larger canvas (room for later jitter): its centre holds exactly the pixels of the plain crop,
    because every output pixel's source position is computed from its place in the plain crop.
    """
    matrix = framing_matrix(face, size, framing)
    if jitter is not None:
        matrix = (jitter @ np.vstack([matrix, [0, 0, 1]]))[:2]
    canvas = canvas or size
    offset, reach = (canvas - size) // 2, size // 4 + 2
    if (canvas - size) % 2 or offset > reach:
        raise ValueError(f"canvas {canvas} must exceed size {size} by an even number up to {2 * reach}")
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.5:
        # Shrinking more than 2x in one warp aliases: halve the face's neighbourhood first.
        halvings = int(np.ceil(np.log2(0.5 / scale)))
        image, matrix = _halve_around_crop(image, matrix, size, reach, halvings)
    inverse = cv2.invertAffineTransform(matrix)
    place = np.arange(canvas, dtype=np.float64) - offset
    map_x = inverse[0, 0] * place[None, :] + (inverse[0, 1] * place[:, None] + inverse[0, 2])
    map_y = inverse[1, 0] * place[None, :] + (inverse[1, 1] * place[:, None] + inverse[1, 2])
    return cv2.remap(image, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


def framing_matrix(face: Face, size: int, framing: dict | None = None) -> np.ndarray:
    """The 2x3 similarity from photo pixels to the size x size framed face."""
    framing = framing or DEFAULT_FRAMING
    if face.landmarks is not None and framing["method"] == "landmarks":
        return similarity_from_landmarks(np.asarray(face.landmarks, np.float64), size, framing["template"])
    return similarity_from_box(face.box, size, framing["box_framing"][face.box_source])


def _halve_around_crop(image: np.ndarray, matrix: np.ndarray, size: int, reach: int, halvings: int):
    """Cut out the photo region behind the crop (and `reach` pixels around it, whatever the canvas) and
    halve it `halvings` times with a Gaussian pyramid (cheap, and free of aliasing); return it with the
    matrix that now maps it to the crop. The region starts on a multiple of 2**halvings, so the pyramid
    samples the photo the same way for every crop of this face."""
    step = 2 ** halvings
    inverse = cv2.invertAffineTransform(matrix)
    low, high = -reach, size + reach
    corners = np.array([[low, low, 1], [high, low, 1], [low, high, 1], [high, high, 1]], np.float64) @ inverse.T
    height, width = image.shape[:2]
    border = 4 * step  # the pyramid's support: pixels near the cut see only real neighbours
    x0, y0 = (np.floor((corners.min(0) - border) / step) * step).astype(int)
    x0, y0 = min(max(x0, 0), (width - 1) // step * step), min(max(y0, 0), (height - 1) // step * step)
    x1, y1 = np.ceil(corners.max(0) + border).astype(int)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    shrunk = image[y0:y1, x0:x1]
    done = 0
    while done < halvings and min(shrunk.shape[:2]) >= 2:
        shrunk = cv2.pyrDown(shrunk)
        done += 1
    # pyrDown's pixel i is centred on its input's pixel 2i: source = (x0, y0) + 2**done * shrunk pixel
    to_source = np.array([[2 ** done, 0, x0], [0, 2 ** done, y0], [0, 0, 1]], np.float64)
    return shrunk, matrix @ to_source


# --- detection ----------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_yunet(model_path: str | None = None, download: bool = True) -> Path | None:
    """YuNet's file: --detector-model, then $AGE_GENDER_YUNET, then the cache (downloaded once, verified)."""
    for candidate in (model_path, os.environ.get(YUNET_ENV)):
        if candidate:
            if not Path(candidate).is_file():
                raise UserError(f"YuNet model {candidate} not found")
            return Path(candidate)
    if YUNET_CACHE.is_file() and _sha256(YUNET_CACHE) == YUNET_SHA256:
        return YUNET_CACHE
    if not download:
        return None
    from Dataset import download_file  # the project's one verified, resumable downloader

    try:
        download_file(YUNET_URL, YUNET_CACHE, sha256=YUNET_SHA256, retries=1, timeout_s=5, progress=False)
    except UserError:
        return None
    return YUNET_CACHE


class FaceDetector:
    """Finds faces with YuNet (box, five landmarks, score) or, failing that, OpenCV's Haar cascade."""

    def __init__(self, kind: str = "yunet", model_path: str | None = None, score_threshold: float = DETECTION_SCORE,
                 min_face: int = 0, download: bool = True):
        self.kind, self.score_threshold, self.min_face = kind, score_threshold, min_face
        if kind == "yunet":
            yunet_path = find_yunet(model_path, download)
            if yunet_path is None:
                print("warning: YuNet face detector unavailable (offline?); using OpenCV's Haar cascade "
                      f"(set {YUNET_ENV} to a copy of {YUNET_FILE})", file=sys.stderr)
                self.kind = "haar"
            else:
                try:
                    self.yunet = cv2.FaceDetectorYN.create(str(yunet_path), "", (320, 320), score_threshold, 0.3, 5000)
                except cv2.error:
                    raise UserError(f"{yunet_path} is not a YuNet model OpenCV can load") from None
        if self.kind == "haar":
            cascade_path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
            self.haar = cv2.CascadeClassifier(cascade_path)
            if self.haar.empty():
                raise UserError(f"OpenCV's Haar cascade {cascade_path} is missing (OpenCV 5 wheels ship none)")

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in a BGR image, largest first, in the image's own pixel coordinates."""
        height, width = image.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        small = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1 else image
        faces = self._detect_yunet(small) if self.kind == "yunet" else self._detect_haar(small)
        for face in faces:
            face.box = tuple(float(v) / scale for v in face.box)
            if face.landmarks is not None:
                face.landmarks = face.landmarks / scale
        faces = [f for f in faces if max(f.box[2], f.box[3]) >= self.min_face]
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])

    def _detect_yunet(self, image: np.ndarray) -> list[Face]:
        self.yunet.setInputSize((image.shape[1], image.shape[0]))
        _, rows = self.yunet.detect(image)
        if rows is None:
            return []
        return [Face(tuple(row[:4]), row[4:14].reshape(5, 2).astype(np.float64), float(row[14]), "yunet")
                for row in rows]

    def _detect_haar(self, image: np.ndarray) -> list[Face]:
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        min_side = max(24, min(grey.shape) // 20)
        boxes, _, weights = self.haar.detectMultiScale3(grey, 1.1, 5, minSize=(min_side, min_side),
                                                        outputRejectLevels=True)
        return [Face(tuple(map(float, box)), None, float(weight), "haar")
                for box, weight in zip(boxes, np.ravel(weights))]
