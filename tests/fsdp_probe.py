"""A callback the distributed recipe tests add to a run (through the CLI): it observes, on every rank, what
the sharded training did and writes it to `<folder>/probe_rank<r>.json`.

- per optimizer step: the norm of the gathered full gradient (before clipping), the norm the module logged,
  and the factor by which this rank's own shard was scaled between the module's hook and the update (clipping);
- per training step: a checksum of the generator rollout's first input (the starting noise of the step);
- optionally a checkpoint after a given step, written exactly as ModelCheckpoint writes one (a run "killed"
  right after that step).
"""
from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
import torch


def _local_norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.sqrt(sum((g.to_local() if hasattr(g, "to_local") else g).double().square().sum()
                                for g in grads)))


def _full_norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.sqrt(sum((g.full_tensor() if hasattr(g, "full_tensor") else g).double().square().sum()
                                for g in grads)))


class FSDPProbe(pl.Callback):
    """Args:
        folder: where probe_rank<r>.json goes.
        save_at_step: when > 0, write `<folder>/step<N>.ckpt` after global step N.
    """

    def __init__(self, folder: str, save_at_step: int = 0) -> None:
        self.folder, self.save_at_step = folder, save_at_step
        self.steps: list[dict[str, Any]] = []
        self.noise: dict[int, list[float]] = {}
        self._pending: dict[str, Any] | None = None

    def _params(self, optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(self._after_step)
        generator = getattr(pl_module, "generator", None)
        if generator is not None:
            cached = generator.forward_cached  # the FSDP forward-method wrapper when sharded

            def record_first_input(x, *args, **kwargs):
                step = int(trainer.global_step)
                if pl_module.training and step not in self.noise:
                    self.noise[step] = [float(x.double().sum()), float(x.double().square().sum())]
                return cached(x, *args, **kwargs)

            generator.forward_cached = record_first_input

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        # callbacks run before the module's hook, which logs the norm and clips: these are raw gradients
        params = self._params(optimizer)
        self._pending = {"step": int(trainer.global_step), "optimizer": trainer.optimizers.index(optimizer),
                         "full_norm": _full_norm(params), "local_before": _local_norm(params)}

    def _after_step(self, optimizer, args, kwargs) -> None:
        # a post-hook: under automatic optimisation the closure (backward, hooks, clipping) runs inside step()
        if self._pending is None:
            return
        record, self._pending = self._pending, None
        record["local_after"] = _local_norm(self._params(optimizer))
        self.steps.append(record)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("grad_norm")}
        for record in self.steps:
            if "logged" not in record:
                record["logged"] = logged
        if self.save_at_step and trainer.global_step == self.save_at_step:
            trainer.save_checkpoint(os.path.join(self.folder, f"step{self.save_at_step}.ckpt"))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with open(os.path.join(self.folder, f"probe_rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"steps": self.steps, "noise": self.noise, "global_step": int(trainer.global_step),
                       "generator_updates": getattr(pl_module, "generator_updates", None)}, f)
