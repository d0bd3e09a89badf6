"""Age and gender of every face in a video or a webcam stream, each face tracked so its labels hold still.

    python predict.py clip.mp4                                  # a table of the tracked faces at the end
    python predict.py clip.mp4 --save annotated.mp4 --every 2   # annotated copy; detect on every 2nd frame
    python predict.py clip.mp4 --format jsonl > frames.jsonl    # one JSON line per processed frame, streamed
    python predict.py --webcam 0 --max-frames 300 --json        # a window where there is a display

predict.py hands videos (by file suffix) and --webcam here. Each processed frame goes through the
detector and the model like a photo (the face and its mirror image on alternate frames, not both); a
detection continues the track whose last box centre is nearest (within MATCH_DISTANCE face widths,
similar size), and each track's age distribution and P(male) are an exponential average over its
frames, so labels do not flicker from frame to frame; its gender changes only when that average is
clearly on the other side of 0.5 (GENDER_MARGIN). The per-track summary (--json, the table)
averages the model's outputs over all of the track's frames.

From Python:

    from predict import AgeGenderPredictor
    from video import process_video
    summary = process_video(AgeGenderPredictor(), "clip.mp4", every=2)   # {"tracks": [...], ...}
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

import cv2
import numpy as np
from tqdm import tqdm

from annotate import annotate, clipped_box
from faces import Face, quiet_opencv
from utils import UserError, atomic_path, check_output_file, fail, finite_json

if TYPE_CHECKING:  # predict.py imports this module: the predictor is passed in, never imported here
    from predict import AgeGenderPredictor

SAVE_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
MATCH_DISTANCE = 0.6  # a face continues a track when its centre moved less than this many face widths
MATCH_SIZE_RATIO = 1.6  # ... and its box is at most this much larger or smaller than the track's
MAX_MISSED = 10  # processed frames a track survives unseen (a turned head, a missed detection)
SMOOTHING = 0.3  # weight of the newest frame in a track's running age distribution and P(male)
GENDER_MARGIN = 0.15  # a track's gender changes only when its smoothed P(male) passes 0.5 by this much
DEFAULT_FPS = 30.0  # for streams that report no frame rate (many webcams)
WINDOW_NAME = "age and gender (q or Esc to stop)"


@dataclass
class Track:
    """One face followed across frames: its last box and its smoothed and accumulated model outputs."""
    number: int
    box: tuple[float, float, float, float]
    score: float
    first_frame: int
    last_frame: int
    age_probs: np.ndarray  # exponential average: what the live label shows
    p_male: float
    age_probs_sum: np.ndarray = field(init=False)  # plain sums over every frame: the track's summary
    p_male_sum: float = field(init=False)
    gender: str = field(init=False)  # the label shown: it changes only past GENDER_MARGIN (hysteresis)
    frames: int = 1
    missed: int = 0

    def __post_init__(self):
        self.age_probs_sum, self.p_male_sum = self.age_probs.copy(), self.p_male
        self.gender = "male" if self.p_male >= 0.5 else "female"

    def add(self, face: Face, age_probs: np.ndarray, p_male: float, frame_index: int, smoothing: float) -> None:
        self.box, self.score, self.last_frame, self.missed = face.box, face.score, frame_index, 0
        self.age_probs = (1 - smoothing) * self.age_probs + smoothing * age_probs
        self.p_male = (1 - smoothing) * self.p_male + smoothing * p_male
        # Hysteresis: a still face whose P(male) wanders about 0.5 as the camera moves keeps one label.
        if abs(self.p_male - 0.5) > GENDER_MARGIN:
            self.gender = "male" if self.p_male > 0.5 else "female"
        self.age_probs_sum += age_probs
        self.p_male_sum += p_male
        self.frames += 1

    def summary(self, fps: float, predictor: AgeGenderPredictor) -> dict:
        return {"track": self.number, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "first_time_s": round(self.first_frame / fps, 3), "last_time_s": round(self.last_frame / fps, 3),
                "frames": self.frames,
                **predictor.face_fields([self.age_probs_sum / self.frames], [self.p_male_sum / self.frames])[0]}


def centre_distance(track_box, face_box) -> float:
    """Distance between box centres in units of the track's face width; inf when the sizes differ too much."""
    tx, ty, tw, th = track_box
    fx, fy, fw, fh = face_box
    if not 1 / MATCH_SIZE_RATIO <= max(fw, 1e-6) / max(tw, 1e-6) <= MATCH_SIZE_RATIO:
        return math.inf
    return math.hypot(fx + fw / 2 - tx - tw / 2, fy + fh / 2 - ty - th / 2) / max(tw, th, 1e-6)


class FaceTracker:
    """Greedy centre-distance matching of detections to tracks; no appearance model, no motion model."""

    def __init__(self, smoothing: float = SMOOTHING, max_missed: int = MAX_MISSED):
        self.smoothing, self.max_missed = smoothing, max_missed
        self.active: list[Track] = []
        self.tracks: list[Track] = []  # every track ever started, for the summary

    def update(self, faces: list[Face], age_probs: np.ndarray, p_male: np.ndarray, frame_index: int) -> list[Track]:
        """Fold one processed frame's faces into the tracks; returns the track of each face, in order."""
        pairs = sorted((centre_distance(track.box, face.box), t, f)
                       for t, track in enumerate(self.active) for f, face in enumerate(faces))
        track_of_face: dict[int, Track] = {}
        used_tracks = set()
        for distance, t, f in pairs:
            if distance < MATCH_DISTANCE and t not in used_tracks and f not in track_of_face:
                used_tracks.add(t)
                track_of_face[f] = self.active[t]
                self.active[t].add(faces[f], age_probs[f], float(p_male[f]), frame_index, self.smoothing)
        for t, track in enumerate(self.active):
            track.missed += t not in used_tracks
        self.active = [track for track in self.active if track.missed <= self.max_missed]
        for f, face in enumerate(faces):
            if f not in track_of_face:
                track = Track(len(self.tracks) + 1, face.box, face.score, frame_index, frame_index,
                              age_probs[f].copy(), float(p_male[f]))
                self.tracks.append(track)
                self.active.append(track)
                track_of_face[f] = track
        return [track_of_face[f] for f in range(len(faces))]


def face_entries(predictor: AgeGenderPredictor, tracks: list[Track], width: int, height: int) -> list[dict]:
    """The per-face JSON of one frame: the detection's box and score, the track's smoothed age and gender."""
    return [{"track": track.number, "index": index, "box": clipped_box(track.box, width, height),
             "score": round(track.score, 3),
             **predictor.face_fields([track.age_probs], [track.p_male], [track.gender])[0]}
            for index, track in enumerate(tracks)]


def draw_tracks(frame: np.ndarray, faces: list[dict]) -> np.ndarray:
    """annotate.annotate's boxes and labels, numbered by track: the same face keeps its number."""
    return annotate(frame, [{**face, "index": face["track"]} for face in faces])


def open_capture(source: str | int) -> cv2.VideoCapture:
    quiet_opencv()
    if isinstance(source, int):
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise UserError(f"webcam {source} cannot be opened (no such camera, or it is busy)")
        return capture
    if not Path(source).is_file():
        raise UserError(f"{source}: no such file" if not Path(source).exists() else f"{source}: is not a file")
    capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise UserError(f"{source}: not a video OpenCV can read (or a truncated one)")
    return capture


def open_window() -> bool:
    """True when a window can be shown; otherwise one line on stderr saying why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("note: no display, so no window; use --save, --json or --format jsonl for the results", file=sys.stderr)
        return False
    try:
        cv2.namedWindow(WINDOW_NAME)
    except cv2.error:
        print("note: this OpenCV has no GUI (opencv-python-headless), so no window; "
              "use --save, --json or --format jsonl for the results", file=sys.stderr)
        return False
    return True


def open_writer(path: Path, fps: float, frame: np.ndarray) -> cv2.VideoWriter:
    codec = SAVE_CODECS[path.suffix.lower()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (frame.shape[1], frame.shape[0]))
    if not writer.isOpened():
        raise UserError(f"cannot write a {codec} video to {path}")
    return writer


def process_video(predictor: AgeGenderPredictor, source: str | int, every: int = 1, max_frames: int | None = None,
                  save: str | None = None, on_frame: Callable[[dict], None] | None = None,
                  show: bool = False) -> dict:
    """Track and label every face of a video file (a path) or a webcam (an index).

    on_frame gets each processed frame's {"image", "frame", "time_s", "faces"} as soon as it is done.
    Returns {"image", "frames_read", "frames_processed", "fps", "tracks": [...]} and, when the stream
    broke off (a truncated file, a camera that stopped), "error" with the reason: everything up to
    there is kept, the annotated video included.
    """
    name = f"webcam {source}" if isinstance(source, int) else str(source)
    save_path = check_output_file(save, [] if isinstance(source, int) else [source]) if save else None
    if save_path and save_path.suffix.lower() not in SAVE_CODECS:
        raise UserError(f"--save {save}: give a video file name ending in {', '.join(sorted(SAVE_CODECS))}")
    capture = open_capture(source)
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
    reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    expected = int(reported) if not isinstance(source, int) and 0 < reported < 1e9 else None
    window = show and open_window()
    tracker, faces, writer, frames_read, frames_processed, error, ok = FaceTracker(), [], None, 0, 0, None, True
    total = min(n for n in (expected, max_frames, math.inf) if n is not None)
    with contextlib.ExitStack() as stack:
        temp_path = stack.enter_context(atomic_path(save_path)) if save_path else None
        progress = stack.enter_context(tqdm(total=None if total == math.inf else total, desc=name, unit="frame"))
        try:
            while max_frames is None or frames_read < max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                index, frames_read = frames_read, frames_read + 1
                progress.update()
                if index % every == 0:
                    faces = label_frame(predictor, tracker, frame, index, mirrored=frames_processed % 2 == 1)
                    frames_processed += 1
                    if on_frame:
                        on_frame({"image": name, "frame": index, "time_s": round(index / fps, 3), "faces": faces})
                if temp_path or window:
                    annotated = draw_tracks(frame, faces)
                    if temp_path:
                        writer = writer or open_writer(temp_path, fps, frame)
                        writer.write(annotated)
                    if window:
                        cv2.imshow(WINDOW_NAME, annotated)
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            break
        except KeyboardInterrupt:
            if not isinstance(source, int):
                raise
            print(f"stopped after {frames_read} frames", file=sys.stderr)  # Ctrl+C is how a webcam run ends
        finally:
            capture.release()
            if writer:
                writer.release()
            if window:
                cv2.destroyWindow(WINDOW_NAME)
        if frames_read == 0:
            raise UserError(f"{name}: no frame could be read" if isinstance(source, int)
                            else f"{name}: not a video OpenCV can read (or a truncated one)")
        stopped_early = max_frames is None or frames_read < max_frames
        if isinstance(source, int) and stopped_early and not ok:
            error = f"{name} stopped delivering frames after {frames_read}"
        elif expected and stopped_early and frames_read + 1 < expected:  # +1: some containers estimate their count
            error = f"{name}: video ends after {frames_read} of {expected} frames (truncated or damaged)"
    summary = {"image": name, "frames_read": frames_read, "frames_processed": frames_processed,
               "fps": round(fps, 3), "tracks": [track.summary(fps, predictor) for track in tracker.tracks]}
    return {**summary, "error": error} if error else summary


def label_frame(predictor: AgeGenderPredictor, tracker: FaceTracker, frame: np.ndarray, index: int,
                mirrored: bool = False) -> list[dict]:
    """Detect, predict and track one frame's faces; their JSON with the tracks' smoothed labels.

    Photos average each face with its mirror image (predict.mirror_average); a video alternates the two
    from one processed frame to the next (mirrored), and the tracks' running averages combine them: the
    same steadier answers for half the model's work.
    """
    found, crops = predictor.frame(frame)
    if len(crops):
        outputs = predictor.run_model(crops[:, :, ::-1] if mirrored else crops)
        age_probs, p_male = outputs["age"], outputs["gender"][:, 0]
    else:
        age_probs, p_male = np.zeros((0, 101)), np.zeros(0)
    tracks = tracker.update(found, age_probs, p_male, index)
    return face_entries(predictor, tracks, frame.shape[1], frame.shape[0])


def print_tracks(summary: dict, out: TextIO) -> None:
    print(f"{'track':>5} {'frames':>7} {'from s':>7} {'to s':>7} {'age':>5} {'range':>9}  {'gender':8} {'conf':>5}",
          file=out)
    for track in summary["tracks"]:
        low, high = track["age_range"]
        print(f"{track['track']:5d} {track['frames']:7d} {track['first_time_s']:7.2f} {track['last_time_s']:7.2f} "
              f"{track['age']:5.1f} {low:4.0f}-{high:<4.0f}  {track['gender']:8} {track['gender_confidence']:5.2f}",
              file=out)
    if not summary["tracks"]:
        print(f"no face found in {summary['frames_processed']} processed frames of {summary['image']}", file=out)


def check_arguments(args: argparse.Namespace) -> None:
    """predict.py's arguments (predict.parse_args) for a video or webcam run: UserError for what cannot
    work, before any output is opened or the model loaded."""
    if args.webcam is not None and args.paths:
        raise UserError("give either a video or --webcam, not both")
    if args.webcam is None and len(args.paths) != 1:
        raise UserError("give one video at a time (videos and photos cannot be mixed in one run)")
    if args.format not in ("table", "json", "jsonl"):
        raise UserError(f"--format {args.format} is for photos; a video gives table, json or jsonl")
    if args.resume:
        raise UserError(f"--resume is for photos: a video is processed from its first frame again (the lines of "
                        f"a stopped run stay in {args.output}.part)")


def run(args: argparse.Namespace, predictor: AgeGenderPredictor, out: TextIO) -> int:
    """predict.py's video and webcam mode: args from predict.parse_args, passed by check_arguments; the
    frames (jsonl), the summary (json) or the table go to out."""
    source = args.webcam if args.webcam is not None else args.paths[0]
    if predictor.detector is None:
        predictor.warn_once("--detector none takes every frame as one cropped face: use a detector for a video "
                            "of people")
    stream = (lambda frame: print(finite_json(frame), file=out, flush=True)) if args.format == "jsonl" else None
    summary = process_video(predictor, source, args.every, args.max_frames, args.save, stream,
                            show=args.webcam is not None)
    if args.format == "json":
        print(finite_json(summary, indent=2), file=out)
    elif args.format == "table":
        print_tracks(summary, out)
    if "error" in summary:
        print(f"error: {summary['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # predict.py owns the command line, for photos and videos alike
    fail("video.py has no command line of its own: run python predict.py CLIP.mp4 "
         "(python predict.py --help lists the video options)", 2)
