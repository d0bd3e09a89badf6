"""Small helpers every script shares: one-line user errors, atomic writes, the model card."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, NoReturn


class UserError(Exception):
    """A problem the user can fix (bad path, bad file): reported as one line, never a traceback."""


def fail(message: str, exit_code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def run_cli(main_function, exit_code: int = 1) -> None:
    """Run a script's main(); a UserError or Ctrl-C ends it with one line instead of a traceback."""
    try:
        raise SystemExit(main_function())
    except UserError as error:
        fail(str(error), exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to final_path; rename it into place only if the block succeeds.

    A crash, a full disk or an exception leaves any earlier file at final_path untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=final_path.parent, prefix=f".{final_path.name}.",
                                         suffix=final_path.suffix)
    os.close(handle)
    temp_path = Path(temp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_path, 0o666 & ~umask)  # mkstemp's 0600 would make results private to their writer
    try:
        yield temp_path
        os.replace(temp_path, final_path)
    finally:
        temp_path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as temp_path:
        temp_path.write_text(json.dumps(data, indent=2) + "\n")


def read_model_card(model_path: str | os.PathLike) -> dict:
    """The card (`model.json`) that sits next to a model file: input size, framing, preprocessing."""
    card_path = Path(model_path).with_name("model.json")
    if not card_path.is_file():
        raise UserError(f"no model card {card_path} next to {model_path}")
    try:
        return json.loads(card_path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read model card {card_path}: {error}") from None
