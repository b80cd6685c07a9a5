"""Route library chatter (Lightning's tips and notices, Python warnings) to a log file.

`make demo` and `make ablations` print their own stage lines, bars and summary; lines a user cannot act
on ("💡 Tip: ...", "Found N module(s) in eval mode", deprecation notices) belong in the log, where they
stay available for a bug report.
"""
from __future__ import annotations

import logging
import os
import warnings

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
