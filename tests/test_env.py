"""Every requirement is installed at a version its specifier allows."""
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = [Requirement(line.split("#")[0].strip())
                for name in ("requirements.txt", "test-requirements.txt")
                for line in (ROOT / name).read_text().splitlines() if line.split("#")[0].strip()]


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=str)
def test_requirement_installed(requirement):
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed")
    assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed} not in {requirement.specifier}"


def test_haar_cascades_ship_with_opencv():
    import cv2

    assert (Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml").is_file()
