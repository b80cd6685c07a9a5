"""User-facing errors: the CLI prints these as one line, never as a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """A mistake in the user's input (a path, key, argument or file content).

    The message must name the thing at fault and say what was expected.
    """


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Exit with main()'s code; a UserError becomes one `error: ...` line and exit code 2 (anything else
    is a bug and keeps its traceback)."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def existing_file(path: str | Path, what: str, option: str | None = None) -> Path:
    """`path` as a Path if it is an existing file; else a one-line UserError naming the option and the path
    (a folder, or nothing at all, where `what` was expected)."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise UserError(f"{label}: is a folder; expected {what}")
    if not path.is_file():
        raise UserError(f"{label}: not found; expected {what}")
    return path


def output_file(path: str | Path, option: str, suffixes: Sequence[str] = (), new_folder_ok: bool = False) -> Path:
    """`path` as a Path if a file may be written there: it is not a folder, and its folder exists (or, with
    `new_folder_ok`, may be created)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; expected a file name")
    if not new_folder_ok and not path.parent.is_dir():
        raise UserError(f"{option} {path}: folder {path.parent} does not exist")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} {path}: expected a {'/'.join(suffixes)} file name")
    return path


def output_folder(path: str | Path, option: str) -> Path:
    """`path` as a Path if it is a folder or can become one (nothing but a folder in the way)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file; expected a folder (existing or new)")
    return path
