"""The training-side scripts under the light install (requirements-predict.txt only): one line naming
requirements.txt, never a traceback, even for --help. And with everything installed, their --help starts
neither Keras nor TensorFlow (no start-up lines, no seconds of waiting)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

TRAINING_SCRIPTS = ["train.py", "evaluate.py", "Dataset.py", "main.py", "filescript.py", "export.py", "quantize.py",
                    "bench.py", "build_cache.py", "teacher.py", "calibrate.py"]
MODULE_OF = {"scikit-learn": "sklearn", "opencv-python-headless": "cv2", "pillow": "PIL"}  # package -> import name


def packages(requirements_file: str) -> set[str]:
    lines = (ROOT / requirements_file).read_text().splitlines()
    names = {Requirement(line.split("#")[0].strip()).name.lower() for line in lines if line.split("#")[0].strip()}
    return {MODULE_OF.get(name, name) for name in names}


# what requirements.txt adds to the light install, and JAX (a backend the light install has no use for either)
NOT_IN_LIGHT_INSTALL = sorted(packages("requirements.txt") - packages("requirements-predict.txt") | {"jax"})


@pytest.fixture(scope="module")
def light_install(tmp_path_factory) -> dict:
    """An environment in which every package outside requirements-predict.txt fails to import, as if it
    were not installed (sys.modules[name] = None: import raises ModuleNotFoundError, find_spec says None)."""
    folder = tmp_path_factory.mktemp("light")
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {NOT_IN_LIGHT_INSTALL!r}:\n"
        "    sys.modules[name] = None\n")
    return {"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"}


def test_the_light_install_really_lacks_them(light_install):
    probe = ("import importlib.util; "
             "print(importlib.util.find_spec('pandas'), importlib.util.find_spec('numpy') is None)")
    result = subprocess.run([sys.executable, "-c", probe], env=light_install, capture_output=True, text=True)
    assert result.stdout.split() == ["None", "False"], result.stderr
    assert {"keras", "tensorflow", "pandas", "requests"} <= set(NOT_IN_LIGHT_INSTALL)
    assert not {"numpy", "cv2", "onnxruntime", "PIL", "tqdm"} & set(NOT_IN_LIGHT_INSTALL)


@pytest.mark.parametrize("arguments", [["--help"], []], ids=["help", "no arguments"])
@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_training_scripts_name_requirements_txt_in_one_line(script, arguments, light_install):
    result = subprocess.run([sys.executable, str(ROOT / script), *arguments], env=light_install, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {script} needs ") and "requirements.txt" in lines[0], \
        result.stderr
    assert "usage:" not in result.stdout


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_help_starts_neither_keras_nor_tensorflow(script):
    """-X importtime lists every module the run imported, on stderr; nothing else may be there."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0 and "usage:" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"keras", "tensorflow", "jax", "pandas", "requests"}, sorted(imported)
    others = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert not others, others  # no start-up lines of any library
    print(f"{script} --help: {elapsed:.2f} s")


def test_a_package_missing_past_the_first_check_is_still_one_line(capsys):
    """run_cli's last line of defence: a module that fails to import later (Keras without its backend,
    say) names the package and requirements.txt instead of 'error: unexpected ModuleNotFoundError'."""
    from utils import run_cli

    def main() -> int:
        import no_such_package_for_this_test  # noqa: F401
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(error.splitlines()) == 1
    assert error.startswith("error: the Python package no_such_package_for_this_test is missing: pip install -r "
                            "requirements.txt")
