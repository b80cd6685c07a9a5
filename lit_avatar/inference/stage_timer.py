"""Per-stage times of a streamed block (audio features, DiT, VAE decode) without waiting for the device.

On CUDA, events are recorded between the stages and read only after the block's frames have been copied to
the host (which waits for the device anyway), so timing adds no synchronisation; on a CPU, work is
synchronous and the host clock is read at each mark.
"""
from __future__ import annotations

import time

import torch


class StageTimer:
    """Marks between stages of one block; `seconds()` gives each stage's duration.

    Args:
        device: where the stages run.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._marks: list[tuple[str, object]] = []

    def _now(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._marks = [("start", self._now())]

    def mark(self, stage: str) -> None:
        """The stage named `stage` ends here (and the next one begins)."""
        self._marks.append((stage, self._now()))

    def seconds(self) -> dict[str, float]:
        """Duration of every marked stage; call after the device has finished the block."""
        out = {}
        for (_, begin), (stage, end) in zip(self._marks, self._marks[1:]):
            out[stage] = begin.elapsed_time(end) / 1000.0 if self.cuda else end - begin
        return out
