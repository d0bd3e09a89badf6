"""video.py through predict.py: real UTKFace faces moving across a clip, tracking, smoothing, bad streams."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT

import annotate
import predict
import video
from build_cache import UTKFACE_NAME
from faces import Face
from utils import run_cli

FRAMES, FPS, SIDE = 30, 10.0, 150


def chip_positions(frame: int) -> list[tuple[int, int]]:
    """Top-left corners of the two faces: one moves right along the top, the other left along the bottom."""
    return [(20 + 8 * frame, 40), (460 - 6 * frame, 290)]


@pytest.fixture(scope="module")
def clip(utkface_dir, tmp_path_factory) -> Path:
    """A 640x480 MJPG clip of two real adult faces (a man and a woman) sliding across a two-tone background."""
    def labelled(gender: str) -> Path:
        return next(p for p in sorted(utkface_dir.iterdir())
                    if (m := UTKFACE_NAME.match(p.name)) and m["gender"] == gender and 25 <= int(m["age"]) <= 50)

    chips = [cv2.resize(cv2.imread(str(labelled(g))), (SIDE, SIDE), interpolation=cv2.INTER_AREA) for g in "01"]
    background = np.full((480, 640, 3), 150, np.uint8)
    background[:, 320:] = (80, 130, 70)
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for frame in range(FRAMES):
        image = background.copy()
        for chip, (x, y) in zip(chips, chip_positions(frame)):
            image[y:y + SIDE, x:x + SIDE] = chip
        writer.write(image)
    writer.release()
    return path


def run_predict(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: predict.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_output_file_instead_of_stdout(clip, yunet_path, tmp_path, capsys):
    """predict.py's --output: the lines go to the file (through FILE.part), never onto an input."""
    output = tmp_path / "frames.jsonl"
    code, out, err = run_predict([str(clip), "--max-frames", "4", "--output", str(output)], capsys)
    assert code == 0 and out == "", err
    assert [json.loads(line)["frame"] for line in output.read_text().splitlines()] == [0, 1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["frames.jsonl"]
    before = clip.read_bytes()
    code, _, err = run_predict([str(clip), "--format", "jsonl", "--output", str(clip)], capsys)
    assert code == 1 and "refusing to overwrite the input" in err and clip.read_bytes() == before


def test_a_stopped_run_keeps_its_frames_and_resume_is_refused_in_one_line(clip, yunet_path, tmp_path, monkeypatch,
                                                                           capsys):
    output = tmp_path / "frames.jsonl"
    label_frame = video.label_frame

    def stopped_at_frame_5(predictor, tracker, frame, index, mirrored=False):
        if index == 5:
            raise KeyboardInterrupt  # Ctrl-C
        return label_frame(predictor, tracker, frame, index, mirrored)

    monkeypatch.setattr(video, "label_frame", stopped_at_frame_5)
    code, _, err = run_predict([str(clip), "--output", str(output)], capsys)
    part = tmp_path / "frames.jsonl.part"
    assert code == 130 and not output.exists() and err.strip().splitlines()[-1] == "error: interrupted"
    assert [json.loads(line)["frame"] for line in part.read_text().splitlines()] == [0, 1, 2, 3, 4]
    code, _, err = run_predict([str(clip), "--output", str(output), "--resume"], capsys)
    assert code == 1 and err.count("\n") == 1 and "--resume is for photos" in err and str(part) in err
    assert len(part.read_text().splitlines()) == 5 and sorted(os.listdir(tmp_path)) == ["frames.jsonl.part"]


def test_faces_are_tracked_across_frames_with_steady_labels(clip, yunet_path, capsys):
    code, out, err = run_predict([str(clip), "--format", "jsonl"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert lines[3]["time_s"] == pytest.approx(3 / FPS) and lines[3]["image"] == str(clip)
    for line in lines:
        assert len(line["faces"]) == 2
        for face in line["faces"]:
            assert {"track", "index", "box", "score", "age", "age_range", "gender", "gender_confidence",
                    "p_male"} <= set(face)
            x, y, w, h = face["box"]
            assert all(isinstance(v, int) for v in face["box"]) and x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480
            # track 1 is the face that starts on the top row, whatever order the detector lists them in
            chip_x, chip_y = chip_positions(line["frame"])[0 if face["track"] == 1 else 1]
            assert chip_x <= x + w / 2 <= chip_x + SIDE and chip_y <= y + h / 2 <= chip_y + SIDE
    by_track = {k: [f for line in lines for f in line["faces"] if f["track"] == k] for k in (1, 2)}
    assert sorted(by_track) == [1, 2] and all(len(faces) == FRAMES for faces in by_track.values())

    # The labels shown are smoothed: they move less from frame to frame than the model's raw answers.
    predictor = predict.AgeGenderPredictor()
    capture = cv2.VideoCapture(str(clip))
    raw = [predictor.predict(capture.read()[1]) for _ in range(FRAMES)]
    top_row_raw = [next(f for f in faces if f["box"][1] < 240)["age"] for faces in raw]
    smoothed = [f["age"] for f in by_track[1]]
    assert np.abs(np.diff(smoothed)).mean() < np.abs(np.diff(top_row_raw)).mean()
    for faces in by_track.values():
        assert len({f["gender"] for f in faces[3:]}) == 1  # no flicker once the track has settled


@pytest.fixture(scope="module")
def panning_clip(utkface_dir, tmp_path_factory) -> Path:
    """2 s at 25 fps of a camera panning across one still photo of a small child (whose P(male) from the
    previous model wandered about 0.5 as the face moved across the view: labels without hysteresis changed
    5 times; the current model leans male on the first two frames, female from the third on)."""
    chip = next(path for path in utkface_dir.iterdir() if path.name.startswith("3_1_2_20161219162958110"))
    scene = np.full((480, 1200, 3), 150, np.uint8)
    scene[:, 600:] = (80, 130, 70)
    scene[140:340, 500:700] = cv2.resize(cv2.imread(str(chip)), (200, 200), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("pan") / "pan.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for frame in range(50):
        writer.write(np.ascontiguousarray(scene[:, 20 + 10 * frame:660 + 10 * frame]))  # 10 px to the right
    writer.release()
    return path


SETTLING_FRAMES = 10  # a new track's first frames: its smoothed P(male) still leans on the first ones


def test_a_still_face_in_a_panning_clip_keeps_one_gender(panning_clip, yunet_path, capsys):
    code, out, err = run_predict([str(panning_clip), "--format", "jsonl"], capsys)
    assert code == 0, err
    faces = [face for line in out.splitlines() for face in json.loads(line)["faces"]]
    assert len(faces) == 50 and {face["track"] for face in faces} == {1}
    # One gender once the track has settled: the first frames, the child at the frame's edge, may lean the
    # other way, and the label may correct itself once there; after that it never flickers.
    labels = "".join(face["gender"][0] for face in faces)
    changes = sum(before != after for before, after in zip(labels, labels[1:]))
    assert changes <= 1 and len(set(labels[SETTLING_FRAMES:])) == 1 and labels[-1] == "f", labels
    for face in faces:  # the confidence is that of the gender shown, even while P(male) is on the other side
        assert face["gender_confidence"] == pytest.approx(face["p_male"] if face["gender"] == "male"
                                                          else 1 - face["p_male"], abs=1e-3)


def test_json_summary_with_every(clip, yunet_path, capsys):
    code, out, err = run_predict([str(clip), "--json", "--every", "3"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames_read"] == FRAMES and summary["frames_processed"] == len(range(0, FRAMES, 3))
    assert summary["fps"] == FPS and "error" not in summary
    assert [t["track"] for t in summary["tracks"]] == [1, 2]
    last = max(range(0, FRAMES, 3))
    for track in summary["tracks"]:
        assert (track["first_frame"], track["last_frame"], track["frames"]) == (0, last, summary["frames_processed"])
        assert track["last_time_s"] == pytest.approx(last / FPS)
        assert 0 <= track["age_range"][0] <= track["age"] <= track["age_range"][1] <= 100
        assert track["gender"] == ("male" if track["p_male"] >= 0.5 else "female")
    code, table, _ = run_predict([str(clip), "--every", "3", "--max-frames", "7"], capsys)
    assert code == 0 and len(table.splitlines()) == 3 and "male" in table  # a header and two tracks


def test_save_writes_an_annotated_video_and_never_the_input(clip, yunet_path, tmp_path, capsys):
    out = tmp_path / "annotated.mp4"
    code, _, err = run_predict([str(clip), "--save", str(out), "--every", "2"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["annotated.mp4"]  # no temporary file left behind
    written, original = cv2.VideoCapture(str(out)), cv2.VideoCapture(str(clip))
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    changed = 0
    for _ in range(FRAMES):  # every frame is written, the unprocessed ones with the last known labels
        (ok, frame), (_, source) = written.read(), original.read()
        assert ok and frame.shape == source.shape
        changed += np.abs(frame.astype(int) - source).mean() > 1
    assert not written.read()[0] and changed == FRAMES

    before = clip.read_bytes()
    code, _, err = run_predict([str(clip), "--save", str(clip)], capsys)
    assert code == 1 and "refusing to overwrite the input" in err and clip.read_bytes() == before
    code, _, err = run_predict([str(clip), "--save", str(tmp_path / "out.gif")], capsys)
    assert code == 1 and "video file name" in err


def test_truncated_video_keeps_the_frames_read_so_far(clip, yunet_path, tmp_path):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[:len(clip.read_bytes()) // 2])
    out = tmp_path / "partial.avi"
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(cut), "--format", "jsonl",
                             "--save", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {cut}: video ends after ")
    assert "truncated" in result.stderr.splitlines()[-1]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert 0 < len(lines) < FRAMES and [line["frame"] for line in lines] == list(range(len(lines)))
    kept = cv2.VideoCapture(str(out))
    assert int(kept.get(cv2.CAP_PROP_FRAME_COUNT)) == len(lines)


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder / "missing.mp4", "no such file"),
    (lambda folder: (folder / "notes.mp4").write_text("not a video") and folder / "notes.mp4", "not a video"),
    (lambda folder: (folder / "empty.avi").write_bytes(b"") or folder / "empty.avi", "not a video"),
])
def test_a_file_that_is_not_a_video_is_one_line(make, message, tmp_path, yunet_path, capsys):
    code, out, err = run_predict([str(make(tmp_path)), "--json"], capsys)
    assert code == 1 and out == "" and message in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err


def test_missing_webcam_and_wrong_combinations_are_one_line(clip, yunet_path, tmp_path, capsys):
    code, _, err = run_predict(["--webcam", "57", "--max-frames", "5"], capsys)
    assert code == 1 and err.strip() == "error: webcam 57 cannot be opened (no such camera, or it is busy)"
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.zeros((40, 40, 3), np.uint8))
    for argv, message in [([str(clip), "--webcam", "0"], "not both"), ([str(clip), str(clip)], "one video at a time"),
                          ([str(clip), str(photo)], "one video at a time")]:
        code, _, err = run_predict(argv, capsys)
        assert code == 1 and message in err, argv
    code, _, err = run_predict([str(clip), "--format", "csv"], capsys)
    assert code == 1 and "--format csv is for photos" in err
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args([])
    assert exit_info.value.code == 2


def test_no_window_without_a_display_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert video.open_window() is False
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    if "GUI: NONE" in " ".join(cv2.getBuildInformation().split()):  # headless OpenCV, even with a display
        monkeypatch.setenv("DISPLAY", ":0")
        assert video.open_window() is False
        assert "no GUI" in capsys.readouterr().err


def face_at(x: float, y: float, side: float = 100.0) -> Face:
    return Face((x, y, side, side), None, 0.9)


def test_tracker_keeps_numbers_smooths_and_retires_lost_faces():
    tracker = video.FaceTracker(smoothing=0.3, max_missed=2)
    flat = np.full((2, 101), 1 / 101)
    p_male = np.array([0.9, 0.1])
    for frame in range(5):  # two faces, listed in alternating order, moving 20 px per frame
        faces = [face_at(10 + 20 * frame, 10), face_at(400 - 20 * frame, 300)]
        order = [1, 0] if frame % 2 else [0, 1]
        tracks = tracker.update([faces[i] for i in order], flat[order], p_male[order], frame)
        assert [t.number for t in tracks] == [i + 1 for i in order]
    # one frame where the model flips on the first face: the smoothed label holds
    tracks = tracker.update([face_at(110, 10)], flat[:1], np.array([0.2]), 5)
    assert tracks[0].number == 1 and tracks[0].p_male > 0.5
    predictor = predict.AgeGenderPredictor(detector="none", use_calibration=False)  # the outputs as given
    assert video.face_entries(predictor, tracks, 640, 480)[0]["gender"] == "male"
    # face 2 has been unseen for 3 processed frames (> max_missed): coming back, it is a new track
    for frame in (6, 7):
        tracker.update([face_at(110, 10)], flat[:1], p_male[:1], frame)
    tracks = tracker.update([face_at(110, 10), face_at(300, 300)], flat, p_male, 8)
    assert [t.number for t in tracks] == [1, 3]
    summary = tracker.tracks[0].summary(10.0, predictor)
    assert (summary["first_frame"], summary["last_frame"], summary["frames"]) == (0, 8, 9)
    assert summary["p_male"] == pytest.approx((0.9 * 8 + 0.2) / 9, abs=1e-3)
    assert summary["age"] == pytest.approx(50.0) and summary["last_time_s"] == pytest.approx(0.8)


def test_a_face_that_jumps_or_changes_size_starts_a_new_track():
    tracker = video.FaceTracker()
    one = np.full((1, 101), 1 / 101)
    assert tracker.update([face_at(100, 100)], one, np.array([0.5]), 0)[0].number == 1
    assert tracker.update([face_at(400, 100)], one, np.array([0.5]), 1)[0].number == 2  # 3 face widths away
    assert tracker.update([face_at(400, 100, side=300)], one, np.array([0.5]), 2)[0].number == 3  # 3x larger
    assert annotate.clipped_box((-5.6, 470.2, 30, 30), 640, 480) == [0, 470, 24, 10]


def test_webcam_stream_with_a_frame_limit_and_a_camera_that_stops(clip, yunet_path, tmp_path, monkeypatch, capsys):
    """A clip stands in for camera 0 (no camera here): the webcam loop, its limits and its ending."""
    real_capture = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda source, *rest: real_capture(
        str(clip) if source == 0 else source, *rest))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    saved = tmp_path / "cam.avi"
    code, out, err = run_predict(["--webcam", "0", "--max-frames", "12", "--format", "jsonl", "--save", str(saved)],
                                 capsys)
    assert code == 0 and "no display, so no window" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(12)) and lines[0]["image"] == "webcam 0"
    assert all(len(line["faces"]) == 2 for line in lines)
    assert int(cv2.VideoCapture(str(saved)).get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    code, out, err = run_predict(["--webcam", "0", "--json", "--every", "5"], capsys)
    summary = json.loads(out)
    assert code == 1 and err.strip().endswith(f"error: webcam 0 stopped delivering frames after {FRAMES}")
    assert summary["frames_read"] == FRAMES and summary["error"] == f"webcam 0 stopped delivering frames after {FRAMES}"
    assert len(summary["tracks"]) == 2


def test_options_that_do_nothing_are_warned_about(clip, tmp_path, capsys):
    code, out, err = run_predict([str(clip), "--detector", "none", "--max-frames", "2", "--json"], capsys)
    assert code == 0 and "warning: --detector none takes every frame as one cropped face" in err
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), np.full((96, 96, 3), 128, np.uint8))
    for option in (["--every", "3"], ["--max-frames", "5"]):
        code, _, err = run_predict([str(photo), "--detector", "none", *option], capsys)
        assert code == 0 and err.strip() == "warning: --every and --max-frames are for videos and the webcam: " \
                                            "each photo is done once"


@pytest.mark.parametrize("argv", [["clip.mp4"], ["--help"]])
def test_video_py_run_as_a_script_points_to_predict_py(argv):
    result = subprocess.run([sys.executable, str(ROOT / "video.py"), *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("error: video.py has no command line of its own: run python predict.py CLIP.mp4 "
                             "(python predict.py --help lists the video options)\n")
