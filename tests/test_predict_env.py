"""requirements-predict.txt is enough for predict.py and serve.py: checked statically over their import graphs."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# import name -> package name (werkzeug comes with flask)
DISTRIBUTION_OF = {"cv2": "opencv-python-headless", "PIL": "pillow", "werkzeug": "flask"}


def requirements(name: str) -> dict[str, Requirement]:
    lines = (ROOT / name).read_text().splitlines()
    parsed = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {requirement.name.lower(): requirement for requirement in parsed}


def imports_of(module_path: Path) -> set[str]:
    """Top-level names this module imports: at module level, and inside the functions that the module
    graph uses (a function-level import in an unused function, like model_card.embed_in_onnx's onnx,
    never runs during prediction)."""
    tree = ast.parse(module_path.read_text())
    names = set()
    for node in tree.body:
        names |= _imported(node, recurse=False)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names |= {f"{node.name}()->{name}" for name in _imported(node, recurse=True)}
    return names


def _imported(node: ast.AST, recurse: bool) -> set[str]:
    nodes = ast.walk(node) if recurse else [node]
    found = set()
    for item in nodes:
        if isinstance(item, ast.Import):
            found |= {alias.name.split(".")[0] for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and item.level == 0:
            found.add(item.module.split(".")[0])
    return found


def names_used(module_path: Path) -> set[str]:
    tree = ast.parse(module_path.read_text())
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | \
        {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


def import_graph(entry: str) -> tuple[set[str], set[str]]:
    """(project modules reached from entry, third-party top-level packages they import)."""
    project = {path.stem for path in ROOT.glob("*.py")}
    modules, third_party, queue = set(), set(), [entry]
    while queue:
        name = queue.pop()
        if name in modules:
            continue
        modules.add(name)
        imported = imports_of(ROOT / f"{name}.py")
        used = set().union(*(names_used(ROOT / f"{module}.py") for module in modules | {entry}))
        for item in imported:
            function, _, package = item.rpartition("()->")
            if function and function not in used:
                continue
            if package in project:
                queue.append(package)
            elif package not in sys.stdlib_module_names and package != "__future__":
                third_party.add(package)
    return modules, third_party


def test_requirements_predict_covers_every_import_of_predict_and_serve():
    """The light install predicts, runs videos and serves the web page; it lists nothing else."""
    modules, third_party = import_graph("predict")
    assert {"predict", "faces", "model_card", "utils", "video", "annotate"} <= modules
    serve_modules, serve_third_party = import_graph("serve")
    needed = {DISTRIBUTION_OF.get(package, package).lower() for package in third_party | serve_third_party}
    assert needed == set(requirements("requirements-predict.txt")), (needed, modules | serve_modules)


def test_prediction_never_imports_tensorflow_or_keras():
    _, third_party = import_graph("predict")
    assert not {"tensorflow", "keras", "tf2onnx", "requests", "pandas"} & third_party


def test_predict_requirements_use_the_ranges_of_requirements_txt():
    full = requirements("requirements.txt")
    for name, requirement in requirements("requirements-predict.txt").items():
        assert name in full and requirement.specifier == full[name].specifier, name


def test_the_graph_walk_sees_a_function_level_import(tmp_path, monkeypatch):
    """The checker itself: an import inside a used function counts, one in an unused function does not."""
    (tmp_path / "entry.py").write_text("import helper\nhelper.used()\n")
    (tmp_path / "helper.py").write_text("def used():\n    import yaml\n\ndef unused():\n    import onnx\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_graph("entry") == ({"entry", "helper"}, {"yaml"})
