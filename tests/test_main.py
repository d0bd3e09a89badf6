"""main.py end to end (download, extract, cache, image check) against a loopback server, kind or hostile."""
from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_wiki_mat
from test_dataset import jpeg_bytes, make_tar, no_backoff, server  # noqa: F401 (fixtures)
from test_dataset_hostile import assert_one_line_error, flip, symlink_chain_tar, tree

import main as fetch_main


def wiki_archive() -> tuple[bytes, int]:
    rows = [  # two usable rows, one without a face, one without gender
        dict(dob=723671, photo_taken=2009, full_path="17/10000217_1981-05-05_2009.jpg", gender=1.0,
             face_location=[5, 5, 50, 50], face_score=4.3),
        dict(dob=711840, photo_taken=1990, full_path="22/2_1948-12-03_1990.jpg", gender=0.0,
             face_location=[1, 2, 40, 41], face_score=2.0),
        dict(dob=711840, photo_taken=1990, full_path="22/3_1948-12-03_1990.jpg", gender=0.0,
             face_location=[1, 1, 1, 1], face_score=float("-inf")),
        dict(dob=711840, photo_taken=1990, full_path="22/4_1948-12-03_1990.jpg", gender=float("nan"),
             face_location=[1, 2, 40, 41], face_score=3.0),
    ]
    with tempfile.TemporaryDirectory() as folder:
        write_wiki_mat(Path(folder) / "wiki.mat", rows)
        members = {"wiki_crop/wiki.mat": (Path(folder) / "wiki.mat").read_bytes()}
    members.update({f"wiki_crop/{r['full_path']}": jpeg_bytes(i, size=256) for i, r in enumerate(rows)})
    return make_tar(members), 2


def run_main(arguments: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        fetch_main.run_cli(lambda: fetch_main.main(arguments))
    return exit_info.value.code


def test_main_fetches_end_to_end_through_a_dropped_connection(server, tmp_path, capsys):
    archive, usable_rows = wiki_archive()
    server.files["/wiki_crop.tar"] = archive
    server.drop_after = len(archive) // 3
    data_dir = tmp_path / "imdb"
    assert fetch_main.main(["--data-dir", str(data_dir), "--url", server.url + "/wiki_crop.tar"]) == 0
    cache = pd.read_csv(data_dir / "cache.csv")
    assert len(cache) == usable_rows
    assert cache.iloc[0]["path"] == "wiki_crop/17/10000217_1981-05-05_2009.jpg" and cache.iloc[0]["age"] == 28
    assert cache.iloc[1]["age"] == 1990 - 1948 - 1  # born in December
    output = capsys.readouterr().out
    assert "python train.py --cache" in output
    assert server.requests[1].startswith("bytes=") and server.requests[1] != "bytes=0-"
    assert fetch_main.main(["--data-dir", str(data_dir), "--url", server.url + "/wiki_crop.tar"]) == 0
    assert len(server.requests) == 2  # nothing fetched again
    assert "up to date" in capsys.readouterr().out


def test_main_refuses_a_malicious_archive(server, tmp_path, capsys):
    server.files["/wiki_crop.tar"] = make_tar({"wiki_crop/wiki.mat": b"x", "../../evil.txt": b"owned"})
    assert run_main(["--data-dir", str(tmp_path / "imdb"), "--url", server.url + "/wiki_crop.tar"]) == 1
    assert "unsafe archive" in capsys.readouterr().err
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_main_writes_nothing_outside_through_a_symlink_chain(server, tmp_path, capsys):
    server.files["/wiki_crop.tar"] = symlink_chain_tar()
    (tmp_path / "outside").mkdir()
    assert run_main(["--data-dir", str(tmp_path / "imdb"), "--url", server.url + "/wiki_crop.tar"]) == 1
    assert_one_line_error(capsys.readouterr().err, "unsafe archive")
    assert tree(tmp_path / "outside") == set()
    assert {name for name in tree(tmp_path) if not Path(name).name.startswith(".")} == {"imdb", "outside"}


def test_main_recovers_from_a_corrupt_download_on_the_next_run(server, tmp_path, capsys):
    archive, usable_rows = wiki_archive()
    third_header = tarfile.open(fileobj=io.BytesIO(archive)).getmembers()[2].offset
    server.files["/wiki_crop.tar"] = flip(archive, third_header + 3)  # a damaged header: tarfile would stop there
    arguments = ["--data-dir", str(tmp_path / "imdb"), "--url", server.url + "/wiki_crop.tar"]
    assert run_main(arguments) == 1
    assert_one_line_error(capsys.readouterr().err, "the download was deleted")
    assert not (tmp_path / "imdb" / "wiki_crop.tar").exists() and not (tmp_path / "imdb" / "wiki_crop").exists()
    server.files["/wiki_crop.tar"] = archive  # the mirror was fixed
    assert run_main(arguments) == 0
    assert len(pd.read_csv(tmp_path / "imdb" / "cache.csv")) == usable_rows


def test_main_reports_a_web_page_in_one_line(server, tmp_path, capsys):
    server.files["/wiki_crop.tar"], server.content_type = b"<html>maintenance</html>", "text/html"
    assert run_main(["--data-dir", str(tmp_path / "imdb"), "--url", server.url + "/wiki_crop.tar"]) == 1
    assert_one_line_error(capsys.readouterr().err, "web page")
    assert not (tmp_path / "imdb" / "wiki_crop.tar").exists()


@pytest.mark.parametrize("arguments", [["--retries", "0"], ["--timeout", "-1"], ["--deadline", "nan"],
                                       ["--sha256", "12"], ["--url", "imdb/wiki_crop.tar"], ["--dataset", "lfw"]])
def test_main_bad_arguments_are_one_line(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fetch_main.main(arguments)
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err.strip().splitlines()[-1]


def test_main_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "imdb").write_text("a file")
    assert run_main(["--data-dir", str(tmp_path / "imdb" / "sub"), "--url", "http://127.0.0.1:9/wiki_crop.tar"]) == 1
    assert_one_line_error(capsys.readouterr().err, "is a file")
