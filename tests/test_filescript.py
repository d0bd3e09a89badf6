"""filescript.py: is every image in a cache there, non-empty and decodable?"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

import filescript


def make_dataset(root):
    images = root / "wiki_crop" / "00"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "good.jpg"), np.full((40, 40, 3), 128, np.uint8))
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("not an image")
    rows = ["good.jpg", "empty.jpg", "text.jpg", "missing.jpg"]
    cache = root / "cache.csv"
    pd.DataFrame({"path": [f"wiki_crop/00/{r}" for r in rows], "age": 30, "gender": 1}).to_csv(cache, index=False)
    return cache


def test_reports_bad_rows_and_writes_clean_cache(tmp_path, capsys):
    cache = make_dataset(tmp_path)
    clean = tmp_path / "clean.csv"
    status = filescript.main(["--cache", str(cache), "--root", str(tmp_path), "--decode", "--write-clean", str(clean)])
    assert status == 1
    printed = capsys.readouterr().out
    assert "4 images listed, 1 fine, 3 bad" in printed and "missing: " in printed
    report = pd.read_csv(tmp_path / "cache.bad.csv")
    assert dict(zip(report["path"].str.split("/").str[-1], report["problem"])) == {
        "empty.jpg": "empty", "text.jpg": "undecodable", "missing.jpg": "missing"}
    assert pd.read_csv(clean)["path"].tolist() == ["wiki_crop/00/good.jpg"]


def test_without_decode_only_existence_and_size(tmp_path, capsys):
    cache = make_dataset(tmp_path)
    assert filescript.main(["--cache", str(cache), "--root", str(tmp_path)]) == 1
    assert "4 images listed, 2 fine, 2 bad" in capsys.readouterr().out
    report = pd.read_csv(tmp_path / "cache.bad.csv")
    assert sorted(report["problem"]) == ["empty", "missing"]


def test_complete_dataset_exits_0(tmp_path):
    cache = make_dataset(tmp_path)
    table = pd.read_csv(cache)
    table[table["path"].str.endswith("good.jpg")].to_csv(cache, index=False)
    assert filescript.main(["--cache", str(cache), "--root", str(tmp_path), "--decode"]) == 0
