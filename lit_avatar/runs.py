"""The start every runner shares (`make demo`, the ablation table, the caption study, micro-wan)."""
from __future__ import annotations

from pathlib import Path


def open_run_folder(out: str, threads: int | None, log_name: str) -> Path:
    """Set torch's thread count (when given), create the run folder and route library chatter to its log.

    Args:
        out: the run folder (created with its parents).
        threads: torch threads; None or 0 keeps torch's default.
        log_name: the log file's name inside the folder, e.g. "demo.log".

    Returns:
        The folder, resolved.
    """
    from lit_avatar.quiet import route_library_logs

    if threads:
        import torch

        torch.set_num_threads(threads)
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    route_library_logs(folder / log_name)
    return folder
