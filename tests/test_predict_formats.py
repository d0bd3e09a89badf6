"""predict.py's outputs: table, json, jsonl and csv parsed back; streaming, atomic --output, --resume."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import pytest
from test_predict_inputs import colourful, run_predict

import predict

FACE_KEYS = {"index", "box", "score", "age", "age_range", "gender", "gender_confidence", "p_male"}


@pytest.fixture
def folder(tmp_path) -> Path:
    """Twelve small face-sized pictures (one deep in a long path) and one file that is not an image."""
    photos = tmp_path / "photos"
    deep = photos / "a folder with a rather long name" / "and another one below it"
    deep.mkdir(parents=True)
    for number in range(11):
        cv2.imwrite(str(photos / f"{number:02d}.png"), colourful(seed=number))
    cv2.imwrite(str(deep / "long.png"), colourful(seed=11))
    (photos / "zz_broken.jpg").write_text("not a JPEG")
    return photos


def test_jsonl_csv_json_and_table_say_the_same(folder, capsys):
    argv = [str(folder), "--detector", "none"]
    _, out_jsonl, err = run_predict(argv + ["--format", "jsonl"], capsys)
    jsonl = [json.loads(line) for line in out_jsonl.splitlines()]
    assert len(jsonl) == 13 and "13/13" in err  # more than a handful of images: a progress bar on stderr
    good = [item for item in jsonl if "faces" in item]
    assert len(good) == 12 and all(set(item["faces"][0]) == FACE_KEYS for item in good)
    assert jsonl[-1] == {"image": str(folder / "zz_broken.jpg"), "error": "not an image this tool can read"}

    code, out_json, _ = run_predict(argv + ["--json"], capsys)
    assert code == 1 and json.loads(out_json) == jsonl

    _, out_csv, _ = run_predict(argv + ["--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out_csv)))
    assert list(rows[0]) == predict.CSV_COLUMNS and len(rows) == 13
    for row, item in zip(rows, jsonl):
        assert row["image"] == item["image"]
        if "error" in item:
            assert row["error"] == item["error"] and row["face"] == row["age"] == ""
            continue
        face = item["faces"][0]
        assert [int(row[key]) for key in "xywh"] == face["box"] and int(row["face"]) == face["index"]
        assert float(row["age"]) == face["age"] and [float(row["age_low"]), float(row["age_high"])] == face["age_range"]
        assert row["gender"] == face["gender"] and float(row["p_male"]) == face["p_male"]
        assert float(row["score"]) == face["score"] and row["error"] == ""

    _, out_table, _ = run_predict(argv, capsys)
    lines = out_table.splitlines()
    width = max(len(item["image"]) for item in jsonl)  # the image column fits the longest path
    assert lines[0].startswith("image" + " " * (width - 5) + "  face  box")
    for line, item in zip(lines[1:], jsonl):
        assert line[:width].rstrip() == item["image"] and line[width:width + 2] == "  "
        if "faces" in item:  # every column starts where its header does
            face = item["faces"][0]
            assert line[width + 2:width + 6] == f"{face['index']:>4}"
            box_at = lines[0].index("box")
            assert line[box_at:].startswith(", ".join(map(str, face["box"])))
            assert line[lines[0].index("gender"):].startswith(face["gender"])


def test_few_images_get_no_progress_bar(folder, capsys):
    code, _, err = run_predict([str(folder / "00.png"), str(folder / "01.png"), "--detector", "none"], capsys)
    assert code == 0 and err == ""


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_results_stream_to_the_part_file_and_resume_continues(folder, tmp_path, monkeypatch, capsys, fmt):
    output = tmp_path / f"results.{fmt}"
    part = output.with_name(output.name + ".part")
    predict_files = predict.predict_files
    seen = []

    def interrupted_after_five(predictor, paths, saver=None):
        for result in predict_files(predictor, paths, saver):
            seen.append(result["image"])
            if len(seen) > 1:  # the previous result is already on disk, as a whole line
                assert part.read_text().count("\n") == len(seen) - 1 + (fmt == "csv")
            if len(seen) == 6:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(predict, "predict_files", interrupted_after_five)
    code, _, err = run_predict([str(folder), "--detector", "none", "--format", fmt, "--output", str(output)], capsys)
    assert code == 130 and not output.exists() and part.is_file()
    with open(part, "a") as handle:
        handle.write('{"image": "half a line')  # the kill came mid-write
    monkeypatch.setattr(predict, "predict_files", predict_files)

    done_before = set(seen[:5])
    calls = []
    monkeypatch.setattr(predict, "load_entry", lambda path, *rest: calls.append(path) or
                        predict_load_entry(path, *rest))
    code, _, _ = run_predict([str(folder), "--detector", "none", "--format", fmt, "--output", str(output),
                              "--resume"], capsys)
    assert code == 1 and output.is_file() and not part.exists()
    assert len(calls) == 8 and not done_before & set(calls)  # only the images not done yet
    text = output.read_text()
    images = [json.loads(line)["image"] for line in text.splitlines()] if fmt == "jsonl" else \
        [row["image"] for row in csv.DictReader(io.StringIO(text))]
    assert sorted(images) == sorted(str(path) for path in predict.list_images([str(folder)]))

    cv2.imwrite(str(folder / "new.png"), colourful(seed=99))  # a finished output, resumed with a new photo
    calls.clear()
    run_predict([str(folder), "--detector", "none", "--format", fmt, "--output", str(output), "--resume"], capsys)
    assert calls == [str(folder / "new.png")] and output.read_text().startswith(text)


predict_load_entry = predict.load_entry


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_a_failed_run_leaves_an_earlier_output_whole(folder, tmp_path, monkeypatch, capsys, fmt):
    output = tmp_path / "results.out"
    output.write_text("earlier results\n")

    def failing(predictor, paths, saver=None):
        yield {"image": paths[0], "faces": []}
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict, "predict_files", failing)
    code, _, err = run_predict([str(folder), "--detector", "none", "--format", fmt, "--output", str(output)], capsys)
    assert code == 1 and "no space left" in err
    assert output.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "results.out"]  # no temporary file left
    monkeypatch.undo()
    code, out, _ = run_predict([str(folder), "--detector", "none", "--format", fmt, "--output", str(output)], capsys)
    assert code == 1 and out == ""  # the results went to the file
    written = output.read_text()
    assert len(json.loads(written)) == 13 if fmt == "json" else written.count("\n") == 14


def test_resume_knows_an_image_however_its_path_is_spelled(folder, tmp_path, monkeypatch, capsys):
    """photos, ./photos, /abs/photos, or a run from another folder: one image is one record."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "r.jsonl"
    code, _, _ = run_predict(["photos", "--detector", "none", "--output", str(output)], capsys)
    assert code == 1 and len(output.read_text().splitlines()) == 13  # zz_broken.jpg is an error record
    calls = []
    monkeypatch.setattr(predict, "load_entry", lambda path, *rest: calls.append(path) or
                        predict_load_entry(path, *rest))
    for spelling in ("./photos", str(folder), "photos/"):
        run_predict([spelling, "--detector", "none", "--output", str(output), "--resume"], capsys)
        assert calls == [] and len(output.read_text().splitlines()) == 13, spelling
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the records say photos/00.png, which is not here
    run_predict(["../photos", "--detector", "none", "--output", str(output), "--resume"], capsys)
    assert calls == [] and len(output.read_text().splitlines()) == 13
    cv2.imwrite(str(folder / "new.png"), colourful(seed=98))
    run_predict(["../photos", "--detector", "none", "--output", str(output), "--resume"], capsys)
    assert calls == ["../photos/new.png"] and len(output.read_text().splitlines()) == 14


@pytest.mark.parametrize("name, fmt", [("ages.csv", "csv"), ("ages.jsonl", "jsonl"), ("ages.JSON", "json"),
                                       ("ages.txt", "table")])
def test_the_output_file_name_sets_the_format(folder, tmp_path, capsys, name, fmt):
    output = tmp_path / name
    run_predict([str(folder / "00.png"), "--detector", "none", "--output", str(output)], capsys)
    text = output.read_text()
    if fmt == "csv":
        assert text.startswith(",".join(predict.CSV_COLUMNS))
    elif fmt == "json":
        assert json.loads(text)[0]["image"] == str(folder / "00.png")
    elif fmt == "jsonl":
        assert json.loads(text.splitlines()[0])["image"] == str(folder / "00.png")
    else:
        assert text.startswith("image")


def test_a_format_that_contradicts_the_file_name_is_refused(folder, tmp_path, capsys):
    code, _, err = run_predict([str(folder / "00.png"), "--format", "table", "--output", str(tmp_path / "a.csv")],
                               capsys)
    assert code == 2 and "--format table but --output" in err and "names csv" in err
    assert not (tmp_path / "a.csv").exists()
    code, _, _ = run_predict([str(folder / "00.png"), "--detector", "none", "--format", "csv", "--output",
                              str(tmp_path / "a.txt")], capsys)
    assert code == 0 and (tmp_path / "a.txt").read_text().startswith("image,face")
