"""A progress bar by optimizer steps with an ETA, and the measured seconds per step.

Lightning's own bar counts batches of an epoch, which a streamed (webdataset) loader does not know, so it
shows no total and no ETA. Demo and ablation stages train by `max_steps`; this bar counts those.
"""
from __future__ import annotations

import os
import time

import lightning.pytorch as pl

from lit_avatar.data.atomic import write_json_atomic


class StepProgress(pl.Callback):
    """tqdm bar over `trainer.max_steps` (with ETA); writes `<log_dir>/step_times.json` when fitting ends.

    Args:
        desc: the bar's label (the stage name).
        enabled: draw the bar (the step times are recorded either way).
    """

    def __init__(self, desc: str = "train", enabled: bool = True) -> None:
        self.desc = desc
        self.enabled = enabled
        self._bar = None
        self._last: float | None = None
        self.step_seconds: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            from lit_avatar.quiet import progress_bar

            self._bar = progress_bar(total=trainer.max_steps, initial=trainer.global_step, desc=self.desc,
                                     unit="step", dynamic_ncols=True, smoothing=0.1)
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.step_seconds.append(now - self._last)
        self._last = now
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)
            if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
                self._close()  # now, so the final rate leaves out the closing validation and checkpoint

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.perf_counter()  # validation time is not a training step's cost

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        if trainer.is_global_zero and trainer.log_dir and self.step_seconds:
            times = sorted(self.step_seconds[1:] or self.step_seconds)  # the first step pays for warm-up
            write_json_atomic(os.path.join(trainer.log_dir, "step_times.json"),
                              {"steps": len(self.step_seconds), "median_s": times[len(times) // 2],
                               "mean_s": sum(times) / len(times)})
