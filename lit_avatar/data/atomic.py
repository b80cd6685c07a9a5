"""Atomic outputs: write to a temp file in the target folder, then os.replace.

A crash or an error mid-write leaves the previous file (or nothing) under the final name, never a
half-written one; readers in other processes see either the old or the new file. Every file the project
writes goes through `atomic_path`, directly or through the write_* helpers below.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# the helpers' temp files: `.<name>.<random>.tmp`, so a glob for the final extension never matches one
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, durable: bool = False) -> Iterator[str]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed.

    Args:
        path: the final file.
        suffix: the temp file's suffix (default: `path`'s, so format-by-extension writers still work).
        durable: fsync the file before it takes its name, so a power loss cannot leave a named but
            empty file behind (for files that later files vouch for, like shards and their done markers).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_temp(name: str) -> bool:
    """Whether a file name is a temp file with TEMP_SUFFIX (which only a killed process leaves behind)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    """Write `data` to `path` atomically, creating its folder.

    Args:
        path: the final file.
        data: its content.
        durable: see `atomic_path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=TEMP_SUFFIX, durable=durable) as tmp:
        Path(tmp).write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write UTF-8 `text` to `path` atomically, creating its folder (see `write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable)


def _finite_or_none(obj: Any) -> Any:
    """NaN/inf -> None recursively (numpy scalars to Python): strict JSON readers reject NaN, and None
    reads as "not computed"."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite_or_none(obj.item())
    return obj


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2, durable: bool = False,
                      default: Any = None) -> None:
    """Write `data` as JSON (non-finite numbers as null, a final newline) atomically, creating its folder.

    Args:
        path: the final file.
        data: JSON-like values (numpy scalars allowed).
        indent: json.dumps indent; None for one line (long lists).
        durable: see `atomic_path`.
        default: json.dumps `default` for values JSON has no type for (e.g. `str`).
    """
    text = json.dumps(_finite_or_none(data), indent=indent, allow_nan=False, default=default)
    write_text_atomic(path, text + "\n", durable)
