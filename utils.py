"""Small helpers every script shares: one-line user errors, argument checks, safe and atomic writes."""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not serialised
    fcntl = None


class UserError(Exception):
    """A problem the user can fix (bad path, bad file): reported as one line, never a traceback."""


def fail(message: str, exit_code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def run_cli(main_function, exit_code: int = 1) -> None:
    """Run a script's main(); every failure ends in one line and a non-zero exit, never a traceback.

    UserError is the expected kind. A disk or permission problem becomes "cannot write ...". Anything
    else is a bug of ours: one line as well, and the traceback only with AGE_GENDER_DEBUG=1.
    """
    try:
        raise SystemExit(main_function())
    except UserError as error:
        fail(str(error), exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        # The reader stopped reading (`predict.py photos/ | head -1`): its choice, so stop quietly, with
        # the status a shell reports for a tool stopped by SIGPIPE. Output goes nowhere from now on, so
        # the interpreter's last flush at exit cannot complain either.
        with contextlib.suppress(OSError, ValueError):  # stdout may be no real file (a test's capture)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
    except MemoryError:
        fail("out of memory: try fewer or smaller inputs (or a smaller --batch-size)", exit_code)
    except ModuleNotFoundError as error:  # an install without what this script needs (e.g. no TensorFlow)
        fail(f"the Python package {error.name} is missing: {FULL_INSTALL}", exit_code)
    except OSError as error:
        fail(describe_os_error(error), exit_code)
    except Exception as error:  # a bug: still one line for the user
        if os.environ.get("AGE_GENDER_DEBUG"):
            raise
        message = str(error).splitlines()[0][:300] if str(error) else ""
        fail(f"unexpected {type(error).__name__}: {message} (set AGE_GENDER_DEBUG=1 for details and report it)",
             exit_code)


FULL_INSTALL = "pip install -r requirements.txt (training and tools; requirements-predict.txt is prediction only)"


def require_packages(script: str, *modules: str) -> None:
    """Stop with one line naming requirements.txt when a package the script needs is not installed (the
    light install, requirements-predict.txt, has no TensorFlow, Keras, pandas or requests). Called first
    thing in main(), before argparse: even --help says so, and nothing half-runs."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"{script} needs {', '.join(missing)}, not installed here: {FULL_INSTALL}")


def describe_os_error(error: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do about a full disk."""
    where = f" {error.filename}" if error.filename else ""
    if error.errno == errno.ENOSPC:
        return f"no space left on the device{where}: free some space and run again"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {error.strerror} (choose another output location)"
    return f"{error.strerror or error}{':' + where if where else ''}"


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hide what native code writes to file descriptor 2 during the block: TensorFlow's start-up lines
    (oneDNN, CUDA, absl) ignore every log-level setting. Python exceptions still rise as usual."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)


# --- argument types (argparse reports a bad value as one line and exits 2) ---------------------

def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_between(low: float, high: float = math.inf, low_inclusive: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value < low if low_inclusive else value <= low
        if not math.isfinite(value) or too_low or value > high:
            bound = ">=" if low_inclusive else ">"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {bound} {low}"
                                             + (f" and <= {high}" if math.isfinite(high) else ""))
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
positive_float = float_between(0.0, low_inclusive=False)


def sha256_hex(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hexadecimal digits)")
    return text.lower()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default that says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # `is`, not `in (None, False)`: 0 == False, and a default of 0 says something (--min-face 0)
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


# --- outputs ------------------------------------------------------------------------------------

def check_output_file(output: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output path that would overwrite an input or that cannot be a file; return it as a Path."""
    output = Path(output)
    if not output.name:
        raise UserError("an empty output path: give a file name")
    if output.is_dir():
        raise UserError(f"{output} is a folder: give a file name for the output")
    if output.is_symlink() or (output.exists() and not output.is_file()):
        raise UserError(f"{output} is a link or a device, not a regular file: give another path for the output")
    for parent in output.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write {output}: {parent} is a file, not a folder")
    # Only an existing output can be an input file; else only a path resolving to the same place.
    # (Matching names first spares resolving every input of a folder of 100,000 images.)
    resolved = None if output.exists() else output.resolve()
    for source in inputs:
        if source is None:
            continue
        if same_file(output, source) if resolved is None else (
                Path(source).name == output.name and Path(source).resolve() == resolved):
            raise UserError(f"refusing to overwrite the input {source} with an output: choose another path")
    return output


@contextlib.contextmanager
def locked(lock_path: Path, busy_message: str) -> Iterator[None]:
    """Hold an exclusive lock on lock_path for the block, or fail at once: two runs would mix their bytes."""
    try:
        handle = open(lock_path, "a")
    except OSError as error:
        raise UserError(describe_os_error(error)) from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{busy_message} (lock {lock_path} is held): wait for it to finish") from None
        yield


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks (archives can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """True when both paths name one file (the same path, a link to it, or a hard link)."""
    first, second = Path(first), Path(second)
    try:
        return os.path.samefile(first, second)
    except OSError:
        return first.resolve() == second.resolve()


def unique_path(path: Path, taken: set[Path]) -> Path:
    """path, or path with _2, _3 ... before its suffix when an earlier output of this run took it."""
    candidate, number = path, 1
    while candidate in taken:
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    taken.add(candidate)
    return candidate


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
        temp_path.write_text(finite_json(data, indent=2) + "\n")


def json_safe(value: Any) -> Any:
    """value with NaN and infinities (never valid JSON) replaced by None, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def finite_json(data: Any, **dumps_options) -> str:
    """JSON text that any parser accepts (no NaN or Infinity)."""
    return json.dumps(json_safe(data), allow_nan=False, **dumps_options)
