"""Small training callbacks."""
from __future__ import annotations

import os

import lightning.pytorch as pl
import torch

from lit_avatar.data.atomic import write_json_atomic


class LossHistory(pl.Callback):
    """Record the training loss of every optimizer step and write it as JSON when fitting ends.

    TensorBoard keeps a subsampled curve (log_every_n_steps); demos, loss tests and quick ablations want
    every value, without parsing event files.

    Args:
        path: JSON file to write; default `<log_dir>/loss_history.json` (nothing written without a logger).
        key: the logged metric to record.
    """

    def __init__(self, path: str | None = None, key: str = "train/loss") -> None:
        self.path = path
        self.key = key
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            self.losses.append(float(loss.detach()))
        elif self.key in trainer.callback_metrics:
            self.losses.append(float(trainer.callback_metrics[self.key]))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.path or (os.path.join(trainer.log_dir, "loss_history.json") if trainer.log_dir else None)
        if path is None or not trainer.is_global_zero:
            return
        write_json_atomic(path, {"key": self.key, "losses": self.losses}, indent=None)
