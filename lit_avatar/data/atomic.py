"""Atomic outputs: write to a temp file in the target folder, then os.replace.

A crash or an error mid-write leaves the previous file (or nothing) under the final name, never a
half-written one; readers in other processes see either the old or the new file.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed.

    Args:
        path: the final file.
        suffix: the temp file's suffix (default: `path`'s, so format-by-extension writers still work).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
