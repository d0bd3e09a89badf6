"""Every script is importable and has an argparse CLI whose --help works."""
import importlib

import pytest

SCRIPTS = ["Dataset", "build_cache", "filescript", "main", "train", "evaluate", "export", "quantize", "calibrate",
           "predict", "bench", "serve"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
