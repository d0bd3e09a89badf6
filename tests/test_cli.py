"""Every script is importable and has an argparse CLI whose --help works."""
import ast
import importlib
import re

import pytest
from conftest import ROOT

SCRIPTS = ["Dataset", "build_cache", "filescript", "main", "train", "evaluate", "export", "quantize", "calibrate",
           "predict", "bench", "serve"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.py")), ids=lambda path: path.name)
def test_docstring_command_lines_keep_their_continuation_backslash(path):
    """A backslash ending a line of a docstring joins it to the next (train.py --help showed one command
    run into the next with a gap): an example continued over lines must show its backslash."""
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    for line in docstring.splitlines():
        assert not re.search(r"\S {3,}--\w", line), f"{path.name}: {line.strip()}"
