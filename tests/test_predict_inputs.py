"""predict.py's inputs: the Python API's image types, hostile files in a folder, outputs that must never
land on an input, bounded memory, strict JSON, wrong networks and bad arguments."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT

import predict
from utils import UserError, run_cli

SHIPPED = ROOT / "models" / "default" / "model.onnx"


def run_predict(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: predict.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def colourful(height: int = 96, width: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth BGR picture whose channels differ, so a red/blue swap changes the prediction."""
    coarse = np.random.default_rng(seed).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    coarse[..., 0] //= 4  # little blue, much red: RGB read as BGR is a different picture
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def predictor():
    return predict.AgeGenderPredictor(detector="none")


def test_paths_pil_images_and_arrays_in_either_channel_order_agree(predictor, tmp_path):
    from PIL import Image

    bgr = colourful()
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "face.png"), bgr)
    expected = predictor.predict(bgr)
    assert predictor.predict(rgb, color="rgb") == expected
    assert predictor.predict(Image.fromarray(rgb)) == expected
    assert predictor.predict(str(tmp_path / "face.png")) == expected == predictor.predict(tmp_path / "face.png")
    assert predictor.predict(np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])) == expected  # BGRA
    assert predictor.predict(rgb)[0]["p_male"] != expected[0]["p_male"]  # why color= matters
    assert predictor.predict_many([bgr, rgb], color="bgr")[0] == expected


def test_greyscale_arrays_become_bgr(predictor):
    grey = cv2.cvtColor(colourful(), cv2.COLOR_BGR2GRAY)
    expected = predictor.predict(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert predictor.predict(grey) == expected == predictor.predict(grey[:, :, None])


@pytest.mark.parametrize("image,message", [
    (np.zeros((0, 50, 3), np.uint8), "shape"), (np.zeros((50, 50, 2), np.uint8), "shape"),
    (np.zeros((50, 50, 3), np.float32), "dtype float32"), (np.zeros((5, 5, 5, 3), np.uint8), "shape"),
    ([[1, 2], [3, 4]], "got list"),
])
def test_unusable_arrays_are_refused_clearly(predictor, image, message):
    with pytest.raises(UserError, match=message):
        predictor.predict(image)


def test_unknown_channel_order_is_refused(predictor):
    with pytest.raises(UserError, match="color must be"):
        predictor.predict(colourful(), color="bgra")


def test_works_from_any_folder_with_the_repository_on_sys_path(tmp_path):
    cv2.imwrite(str(tmp_path / "face.png"), colourful())
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from predict import AgeGenderPredictor; "
            "print(AgeGenderPredictor(detector='none').predict('face.png')[0]['gender'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() in ("male", "female"), result.stderr


def test_hostile_files_in_a_folder_are_each_reported_and_the_rest_processed(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), colourful())
    cv2.imwrite(str(folder / "strip.png"), np.full((1, 3000, 3), 90, np.uint8))
    cv2.imwrite(str(folder / "denied.png"), colourful())
    cv2.imwrite(str(folder / "failing_disk.png"), colourful())
    os.mkfifo(folder / "fifo.jpg")  # opening it would wait forever for a writer
    (folder / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    os_open = os.open

    def failing_open(path, flags, *args, **kwargs):  # what the OS says for an unreadable file, a failing disk
        if Path(path).name in ("denied.png", "failing_disk.png"):
            code = errno.EACCES if Path(path).name == "denied.png" else errno.EIO
            raise OSError(code, os.strerror(code), str(path))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)
    code, out, err = run_predict([str(folder), "--format", "jsonl"], capsys)
    results = {Path(item["image"]).name: item for item in map(json.loads, out.splitlines())}
    assert code == 1 and len(results) == 6
    assert results["good.png"]["faces"] == [] == results["strip.png"]["faces"]  # processed; a 1x3000 strip has no face
    assert "Permission denied" in results["denied.png"]["error"]
    assert "Input/output error" in results["failing_disk.png"]["error"]
    assert "not a regular file" in results["fifo.jpg"]["error"] and "not a regular file" in results["zero.jpg"]["error"]
    assert "Traceback" not in err and err.count("error:") == 4


def test_save_never_writes_onto_an_input(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), colourful())
    before = photo.read_bytes()
    code, out, err = run_predict([str(photo), "--save", str(photo), "--detector", "none"], capsys)
    assert code == 1 and out == "" and "refusing to overwrite the input" in err and err.count("\n") == 1
    assert photo.read_bytes() == before


def test_annotated_copies_of_same_named_inputs_and_of_earlier_copies_all_survive(tmp_path, capsys):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), colourful(seed=seed))
    out = tmp_path / "a"  # annotated copies go next to a/x.png, where an earlier copy is now an input too
    cv2.imwrite(str(out / "x_annotated.jpg"), colourful(seed=3))
    inputs = {path: path.read_bytes() for path in tmp_path.rglob("*")
              if path.is_file()}
    code, _, err = run_predict([str(tmp_path / "a"), str(tmp_path / "b"), "--save", str(out), "--detector", "none"],
                               capsys)
    assert code == 0, err
    assert all(path.read_bytes() == data for path, data in inputs.items())  # no input touched
    written = sorted(path.name for path in out.iterdir() if path not in inputs)
    assert written == ["x_annotated_2.jpg", "x_annotated_3.jpg", "x_annotated_annotated.jpg"]
    assert all(cv2.imread(str(out / name)) is not None for name in written)


def test_decoded_pixels_held_for_save_stay_within_the_budget(tmp_path, monkeypatch, capsys):
    for number in range(7):
        cv2.imwrite(str(tmp_path / f"{number}.png"), colourful(200, 300, seed=number))
    monkeypatch.setattr(predict, "CHUNK_PIXELS", 2 * 200 * 300)  # two of these photos per chunk
    held = []
    finish_chunk = predict.finish_chunk

    def recording(predictor, chunk, saver):
        held.append(sum(image.size // 3 for _, _, image in chunk if image is not None))
        return finish_chunk(predictor, chunk, saver)

    monkeypatch.setattr(predict, "finish_chunk", recording)
    code, _, _ = run_predict([str(tmp_path), "--save", str(tmp_path / "out"), "--detector", "none"], capsys)
    assert code == 0 and max(held) <= 2 * 200 * 300 and len(list((tmp_path / "out").iterdir())) == 7
    held.clear()
    run_predict([str(tmp_path), "--detector", "none"], capsys)
    assert held == [0]  # without --save no decoded photo outlives its face crops


def test_json_and_csv_never_hold_nan(tmp_path, monkeypatch, capsys):
    cv2.imwrite(str(tmp_path / "face.png"), colourful())

    def broken_model(self, crops):
        return {"age": np.full((len(crops), 101), np.nan, np.float32), "gender": np.full((len(crops), 1), np.inf)}

    monkeypatch.setattr(predict.AgeGenderPredictor, "run_model", broken_model)
    for fmt in ("json", "jsonl"):
        code, out, _ = run_predict([str(tmp_path / "face.png"), "--format", fmt, "--detector", "none"], capsys)
        def refuse(constant):
            raise ValueError(constant)
        parsed = json.loads(out if fmt == "json" else out.splitlines()[0], parse_constant=refuse)
        assert code == 0 and parsed
    code, out, _ = run_predict([str(tmp_path / "face.png"), "--format", "csv", "--detector", "none"], capsys)
    assert "nan" not in out.lower() and "inf" not in out.lower()


def test_a_valid_onnx_of_another_network_is_one_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from model_card import embed_in_onnx, read_card

    graph = helper.make_graph([helper.make_node("Flatten", ["image"], ["age"])], "not_age_gender",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 96, 96, 3])],
                              [helper.make_tensor_value_info("age", TensorProto.FLOAT, ["N", 27648])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    embed_in_onnx(path, read_card(SHIPPED))  # even with a valid card it is the wrong network
    cv2.imwrite(str(tmp_path / "face.png"), colourful())
    code, _, err = run_predict([str(tmp_path / "face.png"), "--model", str(path), "--detector", "none"], capsys)
    assert code == 1 and err.count("\n") == 1 and "is not an age/gender model" in err


@pytest.mark.parametrize("argv", [["x.png", "--min-face", "-1"], ["x.png", "--resume"], [],
                                  ["x.png", "--format", "xml"], ["x.png", "--output", "o.json", "--resume"]])
def test_invalid_arguments_are_argparse_errors(argv, capsys):
    code, _, err = run_predict(argv, capsys)
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_detector_none_warns_once_about_images_that_are_not_crops(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a_crop.png"), colourful(96, 96))
    cv2.imwrite(str(tmp_path / "b_photo.png"), colourful(600, 800))
    cv2.imwrite(str(tmp_path / "c_photo.png"), colourful(600, 800))
    code, _, err = run_predict([str(tmp_path / "a_crop.png"), "--detector", "none"], capsys)
    assert code == 0 and err == ""
    code, _, err = run_predict([str(tmp_path), "--detector", "none"], capsys)
    assert code == 0 and err.count("warning:") == 1  # images are framed in parallel: b's or c's warning
    assert re.search(r"[bc]_photo.png is 800x600 pixels, not a face crop", err)


def test_an_unexpected_failure_on_one_image_stays_with_that_image(tmp_path, monkeypatch, capsys):
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), colourful())
    open_photo = predict.open_photo

    def exhausted_on_b(path, *args):
        if Path(path).name == "b.png":
            raise MemoryError()
        return open_photo(path, *args)

    monkeypatch.setattr(predict, "open_photo", exhausted_on_b)
    code, out, err = run_predict([str(tmp_path), "--format", "jsonl", "--detector", "none"], capsys)
    results = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [len(item.get("faces", [])) for item in results] == [1, 0, 1]
    assert results[1]["error"] == "cannot decode: MemoryError" and err.count("\n") == 1


def test_sixteen_bit_greyscale_pil_images_keep_their_face(utkface_dir, yunet_path):
    from PIL import Image

    grey = cv2.cvtColor(cv2.imread(str(sorted(utkface_dir.iterdir())[3])), cv2.COLOR_BGR2GRAY)
    deep = Image.fromarray(grey.astype(np.uint16) * 257)  # mode I;16: RGB conversion would clip it to white
    assert deep.mode == "I;16"
    np.testing.assert_array_equal(predict.to_bgr(deep)[:, :, 0], grey)
    assert len(predict.AgeGenderPredictor().predict(deep)) == 1


def test_a_folder_named_like_a_video_is_a_folder_of_photos(tmp_path, capsys):
    folder = tmp_path / "holiday.mp4"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), colourful())
    code, out, err = run_predict([str(folder), "--detector", "none", "--format", "jsonl"], capsys)
    assert code == 0, err
    assert json.loads(out)["image"] == str(folder / "a.png")


def test_a_folder_run_stopped_early_drops_its_queue(monkeypatch):
    """Ctrl-C, a full disk or a closed pipe ends predict_files early: the inputs queued for preparing are
    cancelled at once, not decoded and searched for faces first (that took minutes on big photos)."""
    calls, lock = [0], threading.Lock()

    def slow_prepared(predictor, path, keep_image):
        with lock:
            calls[0] += 1
        time.sleep(0.01)
        return {"image": path, "faces": []}, None, None

    monkeypatch.setattr(predict, "prepared", slow_prepared)
    results = predict.prepared_in_order(None, [f"{n}.jpg" for n in range(600)], keep_images=False)
    next(results)
    started = time.monotonic()
    results.close()
    assert time.monotonic() - started < 0.5 and calls[0] <= 4 * predict.PREPARE_WORKERS


def test_annotated_copies_saved_into_an_input_folder_are_not_read_as_photos(tmp_path, capsys):
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), colourful(seed=len(name)))
    cv2.imwrite(str(tmp_path / "beach_annotated.jpg"), colourful(seed=5))  # the user's own photo, so named
    argv = [str(tmp_path), "--detector", "none", "--format", "jsonl", "--save", str(tmp_path / "annotated")]
    for _ in range(2):  # the second run finds the first run's copies in the folder it reads
        code, out, err = run_predict(argv, capsys)
        assert code == 0, err
        assert sorted(Path(json.loads(line)["image"]).name for line in out.splitlines()) == \
            ["a.png", "b.png", "beach_annotated.jpg"]
    assert sorted(path.name for path in (tmp_path / "annotated").iterdir()) == \
        ["a_annotated.jpg", "b_annotated.jpg", "beach_annotated_annotated.jpg"]
    assert cv2.imread(str(tmp_path / "annotated" / "a_annotated.jpg")).shape == (96, 96, 3)  # still a plain JPEG


def test_a_missing_path_or_a_url_is_named_once_with_the_reason(tmp_path, capsys):
    missing = str(tmp_path / "photoz") + "/"
    code, _, err = run_predict([missing, "--detector", "none"], capsys)
    assert code == 1 and err == f"error: {missing}: no such file or folder\n"  # named once
    code, _, err = run_predict(["https://example.com/face.jpg", "--detector", "none"], capsys)
    assert code == 1 and "URLs are not fetched: download the image first" in err


def test_predict_many_refuses_one_image_and_says_how_it_fails(predictor, tmp_path):
    for one in ("photo.jpg", tmp_path / "photo.jpg", colourful()):
        with pytest.raises(UserError, match="predict_many takes a list of images.*call predict"):
            predictor.predict_many(one)
    assert len(predictor.predict_many(np.stack([colourful(), colourful(seed=1)]))) == 2  # a batch array is a list
    with pytest.raises(UserError, match="missing.png: no such file"):
        predictor.predict_many([colourful(), tmp_path / "missing.png"])
    assert "raises UserError naming it" in predictor.predict_many.__doc__


def test_a_folder_scan_reads_every_format_a_named_file_may_be(tmp_path, capsys):
    from PIL import Image

    rgb = colourful()[:, :, ::-1]
    for name in ("a.gif", "b.avif", "c.pbm", "d.png"):
        Image.fromarray(rgb).convert("1" if name.endswith(".pbm") else "RGB").save(tmp_path / name)
    named = {name: json.loads(run_predict([str(tmp_path / name), "--detector", "none", "--format", "jsonl"],
                                          capsys)[1]) for name in ("a.gif", "b.avif", "c.pbm", "d.png")}
    assert all(len(result["faces"]) == 1 for result in named.values()), named  # each works when named
    code, out, _ = run_predict([str(tmp_path), "--detector", "none", "--format", "jsonl"], capsys)
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == list(named.values())


def test_help_shows_the_min_face_default(capsys):
    with pytest.raises(SystemExit):
        predict.parse_args(["--help"])
    assert "ignore faces smaller than this (default: 0)" in " ".join(capsys.readouterr().out.split())
