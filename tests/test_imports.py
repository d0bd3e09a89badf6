"""The project's modules import one another one way: no circle, at module level or inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT


def project_imports(module_path: Path, project: set[str]) -> set[str]:
    """The project modules a file imports anywhere (functions included), except under `if TYPE_CHECKING:`,
    which never runs."""
    tree = ast.parse(module_path.read_text())
    type_only = {id(node) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
                 for node in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & project - {module_path.stem}


def import_graph(root: Path) -> dict[str, set[str]]:
    project = {path.stem for path in root.glob("*.py")}
    return {name: project_imports(root / f"{name}.py", project) for name in sorted(project)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while its imports are being walked, then "done"

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported, path + [imported])):
                return cycle
        state[name] = "done"
        return None

    for name in graph:
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_no_module_imports_itself_through_others():
    graph = import_graph(ROOT)
    assert find_cycle(graph) is None, find_cycle(graph)
    assert "predict" not in graph["video"] and "video" in graph["predict"]  # predict.py hands videos down
    assert not {"predict", "video", "serve"} & graph["annotate"]  # drawing and fields sit below all three


def test_the_cycle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def late():\n    from c import thing\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import b\n")
    assert find_cycle(import_graph(tmp_path)) is None  # a type-only import is no circle
    (tmp_path / "c.py").write_text("import a\n")
    assert find_cycle(import_graph(tmp_path)) == ["a", "b", "c", "a"]
