"""Faces: read photos safely, find faces (YuNet or Haar), and frame each face for the model.

One framing function, `frame_face`, serves training (generator.py), evaluation and prediction, so the
model always sees the same picture of a face. With the detector's five landmarks it applies the
similarity transform that puts eyes, nose and mouth at FACE_TEMPLATE; without them it takes a square
crop around the face box with a margin.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np

from utils import UserError, atomic_path, file_sha256

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
YUNET_MAX_BYTES = 2**20  # the model is 230 kB: a larger download or file is not YuNet
YUNET_FETCH_TIMEOUT_S = 5.0  # one short attempt: an offline machine should not wait
YUNET_RETRY_AFTER_S = 24 * 3600  # after a failed download, runs use Haar without retrying for this long
# Measured on 500 UTKFace faces placed on 640x480 canvases (see the README's Predict section).
HAAR_FALLBACK_NOTE = ("it found 71% of test faces (YuNet 99.8%) and, on those, ages 6.9 years off on average "
                      "(YuNet 4.5) and 88% of genders right (YuNet 93%)")
DETECTION_SCORE = 0.6  # YuNet's confidence threshold; below it faces are mostly false alarms
DETECTION_MAX_SIDE = 1280  # huge photos are detected on a copy this size, then boxes are scaled back
MIN_DETECTION_SIDE = 16  # narrower images hold no detectable face
# Smaller photos are enlarged to this longer side first: YuNet misses faces that fill a tiny image
# (on 600 WIKI faces of 64x64 px it found 96.0% as they are, 99.3% at twice the size).
DETECTION_UPSCALE_SIDE = 128
MAX_IMAGE_PIXELS = 100_000_000  # refuse absurd dimensions before decoding (a bomb would need gigabytes)
MAX_FILE_BYTES = 512 * 2**20  # no photo is this large; a bigger file is not read into memory
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
# The scales libjpeg decodes to directly, skipping most of the work of the pixels it drops
REDUCED_JPEG_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
URL_PATTERN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")  # an input given as a URL rather than a file
ANNOTATED_NAME = re.compile(r"_annotated(_[0-9]+)?\.jpg$")  # predict.py --save's names in a folder
ANNOTATED_MARKER = b"annotated by age-gender predict.py"  # in their JPEG comment: a user's own file is kept
# What a folder scan reads: every format that both Pillow (the header check) and OpenCV decode
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm", ".pbm", ".pnm",
                  ".gif", ".avif"}


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x, y, width, height in image pixels
    landmarks: np.ndarray | None  # 5 x 2 pixel positions, or None (Haar, or a box from metadata)
    score: float
    box_source: str = "yunet"  # which BOX_FRAMING entry applies when there are no landmarks


def rescaled_face(face: Face, factor: float) -> Face:
    """The face in an image `factor` times larger (pixel centres map to pixel centres)."""
    def point(xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, np.float64) + 0.5) * factor - 0.5

    x, y = point(face.box[:2])
    box = (float(x), float(y), face.box[2] * factor, face.box[3] * factor)
    landmarks = None if face.landmarks is None else point(face.landmarks)
    return Face(box, landmarks, face.score, face.box_source)


def quiet_opencv() -> None:
    """FFmpeg's and OpenCV's own warnings would break the one-line error rule; our messages say it all."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg first opens a file
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


# --- reading images -----------------------------------------------------------------------------

@dataclass
class Photo:
    """A user's photo, decoded at 1/reduction of its size (1, or 2, 4 or 8 for a large JPEG, which libjpeg
    scales while decoding, at a fraction of the cost of every pixel), with its bytes for full_pixels()."""
    pixels: np.ndarray  # 8-bit BGR, upright per EXIF
    reduction: int
    shape: tuple[int, int, int]  # the full-size image's height, width, 3
    data: bytes
    name: str  # the path as given, for messages

    def full_pixels(self) -> np.ndarray:
        return self.pixels if self.reduction == 1 else _decode(self.data, cv2.IMREAD_COLOR, self.name)


def load_photo(path: str | os.PathLike) -> np.ndarray:
    """Decode a user's photo to 8-bit BGR, upright per EXIF; raise UserError with the reason if it can't.

    Only regular files are opened (a FIFO would hang, a link to /dev/zero would never end), and the
    dimensions are checked from the header before any pixels are decoded.
    """
    return open_photo(path).pixels


def open_photo(path: str | os.PathLike, detection_side: int | None = None) -> Photo:
    """load_photo's checks and decoding; with detection_side, a JPEG is decoded at the largest 1/2, 1/4 or
    1/8 scale whose longer side keeps at least detection_side pixels (what the detector looks at anyway)."""
    shown = os.fspath(path)  # messages name the path as the user typed it
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        hint = " (URLs are not fetched: download the image first)" if URL_PATTERN.match(shown) else ""
        raise UserError(f"{shown}: no such file or folder{hint}") from None
    except OSError as error:
        raise UserError(f"{shown}: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{shown}: is a folder")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{shown}: not a regular file (a device, FIFO or socket): skipped")
    if info.st_size == 0:
        raise UserError(f"{shown}: empty file")
    if info.st_size > MAX_FILE_BYTES:
        raise UserError(f"{shown}: {info.st_size:,} bytes is too large for a photo (limit {MAX_FILE_BYTES:,})")
    data = _read_regular_file(path, shown)
    width, height = _image_size(data, shown)
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"{shown}: {width}x{height} pixels is too large (limit {MAX_IMAGE_PIXELS:,} pixels)")
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and b"\xff\xd9" not in data[-4096:]:
        _check_jpeg_decodes(data, shown)  # no end marker near the end: truncated, or a trailer (motion photo)?
    reduction = max([factor for factor in REDUCED_JPEG_FLAGS if detection_side and is_jpeg
                     and max(width, height) >= factor * detection_side], default=1)
    # IMREAD_COLOR applies EXIF orientation and turns grey, RGBA and 16-bit images into 8-bit BGR.
    pixels = _decode(data, REDUCED_JPEG_FLAGS.get(reduction, cv2.IMREAD_COLOR), shown)
    if reduction == 1:
        return Photo(pixels, 1, pixels.shape, data, shown)
    rotated = pixels.shape[:2] != (-(-height // reduction), -(-width // reduction))  # EXIF turned it upright
    return Photo(pixels, reduction, (width, height, 3) if rotated else (height, width, 3), data, shown)


def _decode(data: bytes, flag: int, shown: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise UserError(f"{shown}: image data could not be decoded")
    return image


def _read_regular_file(path: Path, shown: str) -> bytes:
    """The file's bytes. Opened without blocking and checked again once open, so a file swapped for a
    FIFO after the stat above cannot hang the run."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(handle, "rb") as file:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise UserError(f"{shown}: not a regular file (a device, FIFO or socket): skipped")
            return file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UserError(f"{shown}: cannot read: {error.strerror}") from None


def _image_size(data: bytes, shown: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    from PIL import Image

    try:
        with _open_with_pil(data) as header:
            return header.size
    except Image.DecompressionBombError:
        raise UserError(f"{shown}: too large (over {MAX_IMAGE_PIXELS:,} pixels)") from None
    except Exception:
        raise UserError(f"{shown}: not an image this tool can read") from None


def _check_jpeg_decodes(data: bytes, shown: str) -> None:
    """Decode with PIL, which (unlike OpenCV) refuses a JPEG cut short instead of padding it with grey.
    Data after a complete image, such as a phone's motion-photo video, is fine."""
    try:
        with _open_with_pil(data) as image:
            image.load()
    except Exception:
        raise UserError(f"{shown}: truncated JPEG (the image data ends early)") from None


_PIL_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _open_with_pil(data: bytes):
    """PIL's Image.open with its decompression-bomb guard kept (the process-wide Image.MAX_IMAGE_PIXELS is
    never touched); only its warning, between its limit and twice it, is silenced, here, because our own
    MAX_IMAGE_PIXELS check follows. catch_warnings is process-wide too, hence one thread at a time."""
    from PIL import Image

    with _PIL_WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            yield image


def read_training_image(path: str | os.PathLike) -> np.ndarray | None:
    """Fast decode of a dataset image (trusted files) to BGR, upright per EXIF; None if unreadable."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def is_video(path: str) -> bool:
    """A video file by its suffix (a folder named clip.mp4 is still a folder of photos)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES and not Path(path).is_dir()


def marked_as_annotated(jpeg: bytes) -> bytes:
    """The JPEG with a comment segment saying predict.py drew it, right after its start marker."""
    comment = ANNOTATED_MARKER
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def is_annotated_copy(path: str) -> bool:
    """A NAME_annotated.jpg that predict.py --save wrote (its name, and the comment marked_as_annotated put in)."""
    if not ANNOTATED_NAME.search(path):
        return False
    try:
        with open(path, "rb") as file:
            return ANNOTATED_MARKER in file.read(6 + len(ANNOTATED_MARKER))
    except OSError:
        return False  # reported like any unreadable image


def list_images(paths: list[str]) -> list[str]:
    """Expand folders into their image files (sorted, links to folders not followed; the annotated copies
    predict.py --save wrote there are left out); files are kept as given, even if not images."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path)
                           for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES
                           and not is_annotated_copy(os.path.join(folder, name)))
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

class DetectorUnavailable(UserError):
    """YuNet cannot be had (offline, no copy given); the message says how to get it."""


def yunet_failure_marker() -> Path:
    """A small file beside the cached model remembering when and why the last download failed."""
    return YUNET_CACHE.with_name(YUNET_CACHE.name + ".unavailable")


def how_to_get_yunet(fetching: bool = False) -> str:
    """What to do without YuNet; fetching: said to --fetch-detector itself, which was just tried."""
    download = f"download {YUNET_URL} to {YUNET_CACHE} (or anywhere, and set {YUNET_ENV} to that file)"
    return download if fetching else f"run `python predict.py --fetch-detector`, or {download}"


def _cache_holds_yunet() -> bool:
    return YUNET_CACHE.is_file() and file_sha256(YUNET_CACHE) == YUNET_SHA256


def fetch_yunet(timeout_s: float = YUNET_FETCH_TIMEOUT_S, fetching: bool = False) -> Path:
    """Download YuNet into the cache in one short attempt and verify its sha256; DetectorUnavailable if not
    (fetching: for --fetch-detector, whose message then does not suggest running it).

    A plain urllib request rather than Dataset.download_file: the file is 230 kB (nothing to resume), and
    prediction then needs no `requests`.
    """
    import urllib.error
    import urllib.request  # here, not at the top: its import is a tenth of a one-photo run's start-up

    if _cache_holds_yunet():
        return YUNET_CACHE  # already there
    try:
        with urllib.request.urlopen(YUNET_URL, timeout=timeout_s) as response:
            data = response.read(YUNET_MAX_BYTES + 1)
    except urllib.error.HTTPError as error:
        _remember_failure(f"download failed: HTTP {error.code} {error.reason}", fetching)
    except (OSError, ValueError) as error:  # URLError and timeouts are OSErrors
        _remember_failure(f"download failed: {getattr(error, 'reason', None) or error}", fetching)
    if hashlib.sha256(data).hexdigest() != YUNET_SHA256:
        _remember_failure(f"download from {YUNET_URL} failed its sha256 check", fetching)
    with atomic_path(YUNET_CACHE) as temp_path:
        temp_path.write_bytes(data)
    yunet_failure_marker().unlink(missing_ok=True)
    return YUNET_CACHE


def _remember_failure(reason: str, fetching: bool) -> NoReturn:
    marker = yunet_failure_marker()
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{int(time.time())}\n{reason}\n")
    except OSError:
        pass  # a read-only cache only costs the next run another short attempt
    raise DetectorUnavailable(f"YuNet face detector unavailable ({reason}); {how_to_get_yunet(fetching)}")


def _recent_failure() -> str | None:
    """The reason of a download failure within YUNET_RETRY_AFTER_S, else None."""
    try:
        stamp, reason = yunet_failure_marker().read_text().split("\n", 1)
        age_s = time.time() - float(stamp)
    except (OSError, ValueError):
        return None
    return reason.strip() if abs(age_s) < YUNET_RETRY_AFTER_S else None  # abs: a clock set back


def find_yunet(model_path: str | None = None, download: bool = True, retry: bool = False) -> Path:
    """YuNet's file: --detector-model, then $AGE_GENDER_YUNET, then the cache (downloaded once, verified).

    A failed download is remembered for YUNET_RETRY_AFTER_S so an offline machine does not wait for the
    network on every run; retry=True (an explicit --detector yunet) tries again anyway. Raises
    DetectorUnavailable (a UserError saying how to get YuNet) when there is none.
    """
    if model_path:
        return _named_yunet(model_path, "--detector-model")
    if os.environ.get(YUNET_ENV):
        try:
            return _named_yunet(os.environ[YUNET_ENV], f"${YUNET_ENV}")
        except UserError as error:
            if not _cache_holds_yunet():
                raise
            print(f"warning: {error}; using the verified copy in {YUNET_CACHE}", file=sys.stderr)
            return YUNET_CACHE
    if _cache_holds_yunet():
        return YUNET_CACHE
    if not download:
        raise DetectorUnavailable(f"YuNet face detector not found; {how_to_get_yunet()}")
    reason = None if retry else _recent_failure()
    if reason:
        hours = YUNET_RETRY_AFTER_S / 3600
        raise DetectorUnavailable(f"YuNet face detector unavailable ({reason}; not retried for {hours:.0f} h, "
                                  f"--detector yunet retries now); {how_to_get_yunet()}")
    return fetch_yunet()


def _named_yunet(path: str, named_by: str) -> Path:
    """The YuNet file --detector-model or $AGE_GENDER_YUNET names; UserError saying which, if it is none."""
    if Path(path).is_dir():
        raise UserError(f"{named_by} is {path}, a folder: name the YuNet file itself ({YUNET_FILE})")
    if not Path(path).is_file():
        raise UserError(f"{named_by} names {path}, which does not exist: name the YuNet file ({YUNET_FILE}), "
                        f"or {how_to_get_yunet()}")
    return Path(path)


def _shown_yunet(path: Path, model_path: str | None) -> str:
    """path for messages, with where it was named unless it is the cache's own copy."""
    if model_path:
        return f"{path} (--detector-model)"
    return f"{path} (${YUNET_ENV})" if os.environ.get(YUNET_ENV) and path != YUNET_CACHE else str(path)


class FaceDetector:
    """Finds faces with YuNet (box, five landmarks, score) or OpenCV's Haar cascade (box only).

    kind "auto" is YuNet when it can be had, else Haar with a warning; "yunet" insists on YuNet.
    """

    def __init__(self, kind: str = "auto", model_path: str | None = None, score_threshold: float = DETECTION_SCORE,
                 min_face: int = 0, download: bool = True):
        if kind not in ("auto", "yunet", "haar"):
            raise ValueError(f"unknown detector {kind!r}")
        self.kind, self.score_threshold, self.min_face = kind, score_threshold, min_face
        self._per_thread = threading.local()  # OpenCV's detectors keep state per call: one per thread
        if kind in ("auto", "yunet"):
            try:
                self.yunet_path = find_yunet(model_path, download, retry=kind == "yunet")
                shown = _shown_yunet(self.yunet_path, model_path)
                self.yunet_model = _read_model(self.yunet_path, shown)  # each thread's detector is built from these
                self._per_thread.model = _load_yunet(self.yunet_model, shown, score_threshold)
                self.kind = "yunet"
            except DetectorUnavailable as error:
                if kind == "yunet":
                    raise
                print(f"warning: {error}. Using OpenCV's Haar cascade instead: {HAAR_FALLBACK_NOTE}", file=sys.stderr)
                self.kind = "haar"
        if self.kind == "haar":
            self._per_thread.model = _load_haar()

    def _model(self):
        """This thread's YuNet or Haar cascade (the first call in a thread loads it)."""
        if not hasattr(self._per_thread, "model"):
            # the bytes passed _load_yunet's check at start-up: no probe here, nor its process-wide log level
            self._per_thread.model = (_new_yunet(self.yunet_model, self.score_threshold) if self.kind == "yunet"
                                      else _load_haar())
        return self._per_thread.model

    def detect(self, image: np.ndarray, reduction: int = 1) -> list[Face]:
        """All faces in a BGR image, largest first, in the photo's own pixel coordinates (image may be the
        photo decoded at 1/reduction of its size: Photo.pixels)."""
        height, width = image.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        if min(height, width) * scale < MIN_DETECTION_SIDE:
            return []  # no face fits (a 1 x 3000 strip); YuNet returns garbage on such inputs
        scale = max(scale, DETECTION_UPSCALE_SIDE / max(height, width))
        resized = image if scale == 1 else cv2.resize(
            image, (round(width * scale), round(height * scale)),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        faces = self._detect_yunet(resized) if self.kind == "yunet" else self._detect_haar(resized)
        faces = [rescaled_face(face, reduction / scale) for face in faces]
        faces = [f for f in faces if max(f.box[2], f.box[3]) >= self.min_face]
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])

    def _detect_yunet(self, image: np.ndarray) -> list[Face]:
        yunet = self._model()
        yunet.setInputSize((image.shape[1], image.shape[0]))
        _, rows = yunet.detect(image)
        if rows is None:
            return []
        return [Face(tuple(row[:4]), row[4:14].reshape(5, 2).astype(np.float64), float(row[14]), "yunet")
                for row in rows if np.isfinite(row).all() and row[2] > 0 and row[3] > 0]

    def _detect_haar(self, image: np.ndarray) -> list[Face]:
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        min_side = max(24, min(grey.shape) // 20)
        boxes, _, weights = self._model().detectMultiScale3(grey, 1.1, 5, minSize=(min_side, min_side),
                                                            outputRejectLevels=True)
        return [Face(tuple(map(float, box)), None, float(weight), "haar")
                for box, weight in zip(boxes, np.ravel(weights))]


def _read_model(path: Path, shown: str) -> np.ndarray:
    try:
        size = path.stat().st_size
        if size > YUNET_MAX_BYTES:
            raise UserError(f"{shown} is not a YuNet face detector: {size:,} bytes, where YuNet is 230 kB "
                            f"(expected {YUNET_URL})")
        return np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as error:
        raise UserError(f"cannot read the face detector {shown}: {error.strerror}") from None


def _load_haar():
    cascade_path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    haar = cv2.CascadeClassifier(cascade_path)
    if haar.empty():
        raise UserError(f"OpenCV's Haar cascade {cascade_path} is missing (OpenCV 5 wheels ship none)")
    return haar


def _new_yunet(model: np.ndarray, score_threshold: float):
    return cv2.FaceDetectorYN.create("onnx", model, np.zeros(0, np.uint8), (64, 64), score_threshold, 0.3, 5000)


def _load_yunet(model: np.ndarray, shown: str, score_threshold: float):
    """cv2.FaceDetectorYN on the bytes of an ONNX file (shown: its path, for messages), tried once on a
    blank image: a valid ONNX file of another network fails here, with one line, not on the first photo."""
    log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # OpenCV's DNN errors are many lines
    try:
        yunet = _new_yunet(model, score_threshold)
        _, rows = yunet.detect(np.zeros((64, 64, 3), np.uint8))
        if rows is not None and rows.shape[1] != 15:
            raise cv2.error("unexpected output shape")
    except cv2.error:
        raise UserError(f"{shown} is not a YuNet face detector OpenCV can run (expected {YUNET_URL})") from None
    finally:
        cv2.utils.logging.setLogLevel(log_level)
    return yunet
