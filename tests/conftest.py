"""Shared fixtures. Real data lives in ../shared (present in CI, absent in a user's clone: tests skip)."""
from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import faces  # noqa: E402  (from ROOT, just put on the path)
from utils import file_sha256  # noqa: E402


def installed_yunet(shared: Path, environ: dict, cache: Path) -> Path | None:
    """The YuNet file for the tests: ../shared/models, else where predict.py looks ($AGE_GENDER_YUNET, then
    the cache that --fetch-detector fills), so a user who followed the README runs the tests needing it."""
    for candidate in (shared / "models" / faces.YUNET_FILE, environ.get(faces.YUNET_ENV)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return cache if cache.is_file() and file_sha256(cache) == faces.YUNET_SHA256 else None


YUNET = installed_yunet(SHARED, os.environ, faces.YUNET_CACHE)
if YUNET:
    os.environ["AGE_GENDER_YUNET"] = str(YUNET)  # tests never download the detector


@pytest.fixture(autouse=True)
def no_detector_download(tmp_path, monkeypatch):
    """Point the detector cache at an empty folder so no test can reach the network for it."""
    monkeypatch.setattr(faces, "YUNET_CACHE", tmp_path / "no-cache" / faces.YUNET_FILE)
    monkeypatch.setattr(faces, "YUNET_URL", "http://127.0.0.1:9/unreachable.onnx")


@pytest.fixture(scope="session")
def yunet_path() -> Path:
    if YUNET is None:
        pytest.skip("YuNet is absent (../shared/models, $AGE_GENDER_YUNET, the cache): "
                    "python predict.py --fetch-detector")
    return YUNET


@pytest.fixture(scope="session")
def wiki_mat() -> Path:
    path = SHARED / "data" / "wiki.mat"
    if not path.is_file():
        pytest.skip("../shared/data/wiki.mat is absent")
    return path


@pytest.fixture(scope="session")
def utkface_dir(tmp_path_factory) -> Path:
    """Every 50th real UTKFace photo (about 400), extracted from the shared archive once per session."""
    out = tmp_path_factory.mktemp("utk")
    extract_shared("UTKFace.tar.gz", out, lambda position, member: position % 50 == 0)
    return out / "UTKFace"


def extract_shared(archive_name: str, out: Path, keep, count: int | None = None) -> None:
    """Extract the files of a ../shared/data archive that keep(position, member) picks (the first `count`)."""
    archive = SHARED / "data" / archive_name
    if not archive.is_file():
        pytest.skip(f"../shared/data/{archive_name} is absent")
    extracted = 0
    with tarfile.open(archive, "r|gz") as tar:
        for position, member in enumerate(tar):
            if member.isfile() and keep(position, member):
                tar.extract(member, out, filter="data")
                extracted += 1
                if extracted == count:
                    return


def write_wiki_mat(path: Path, rows: list[dict]) -> None:
    """A wiki.mat in the real layout (struct 'wiki', 1 x N fields, cells for paths, names and boxes)."""
    import numpy as np
    import scipy.io

    def cell(values):
        array = np.empty((1, len(values)), dtype=object)
        for position, value in enumerate(values):
            array[0, position] = value
        return array

    struct = {
        "dob": np.array([[r["dob"] for r in rows]], dtype=np.int32),
        "photo_taken": np.array([[r["photo_taken"] for r in rows]], dtype=np.uint16),
        "full_path": cell([np.array([r["full_path"]]) for r in rows]),
        "gender": np.array([[r["gender"] for r in rows]], dtype=np.float64),
        "name": cell([np.array([r.get("name", "someone")]) for r in rows]),
        "face_location": cell([np.array([r["face_location"]], dtype=np.float64) for r in rows]),
        "face_score": np.array([[r["face_score"] for r in rows]], dtype=np.float64),
        "second_face_score": np.array([[r.get("second_face_score", float("nan")) for r in rows]], dtype=np.float64),
    }
    scipy.io.savemat(path, {"wiki": struct})


@pytest.fixture(scope="session")
def wiki_faces_root(tmp_path_factory) -> Path:
    """A root holding the first 300 real 64x64 WIKI faces of the shared archive (wiki_crop_64/NN/...)."""
    out = tmp_path_factory.mktemp("wiki")
    extract_shared("wiki_crop_64.tar.gz", out, lambda position, member: member.name.endswith(".jpg"), count=300)
    return out
