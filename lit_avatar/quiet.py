"""Quiet where a user reads: library chatter (Lightning's tips and notices, Python warnings) to a log file,
progress bars only on a terminal.

`make demo` and `make ablations` print their own stage lines, bars and summary; lines a user cannot act
on ("💡 Tip: ...", "Found N module(s) in eval mode", deprecation notices) belong in the log, where they
stay available for a bug report.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any, TextIO

LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning",
                   "py.warnings", "jsonargparse")  # not "torch": raising its level would wake its INFO loggers


def route_library_logs(path: str | os.PathLike) -> logging.Handler:
    """Send the library loggers and all Python warnings to `path` (appended) instead of the terminal."""
    import lightning.pytorch  # noqa: F401  (attaches its console handlers on import; replaced below)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings.simplefilter("default")  # every distinct warning once, into the log
    return handler


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, file: TextIO | None = None, **kwargs: Any):
    """A tqdm bar that draws only on a terminal: in a log file or a pipe its redraws would be one line each
    (a 60 s `generate` wrote ~150 into `make demo`'s output). `enabled=False` turns it off everywhere.

    Args:
        iterable: what to wrap (or None with `total=` and `.update`).
        enabled: the command's own switch (`--no-progress`).
        file: where to draw; default stderr, which keeps stdout for results.
        kwargs: tqdm's (desc, unit, total, leave, ...).
    """
    from tqdm import tqdm

    # disable=None: tqdm draws only when `file` is a terminal
    return tqdm(iterable, disable=None if enabled else True, file=file if file is not None else sys.stderr, **kwargs)
