"""Exponential moving average of a network's weights.

The EMA copy is a registered submodule of the LightningModule, so it moves with the model, is sharded
the same way under FSDP (the update is elementwise on matching local shards), and lands in every
checkpoint without extra hooks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lit_avatar.errors import UserError


@dataclass(frozen=True)
class EMASettings:
    """The weight EMA of a stage's trained network (its samples and checkpoint record use the average).

    Args:
        decay: decay per optimizer step, in [0, 1).
        start_step: optimizer step (for Self-Forcing: iteration, critic updates included) from which the EMA
            averages; before it the EMA copies the weights.
    """

    decay: float = 0.99
    start_step: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise UserError(f"model.ema_settings.decay: expected in [0, 1), got {self.decay}")


def make_ema_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy in eval mode: never trained by the optimizer, never in dropout mode."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


def ema_decay_at(step: int, decay: float, start_step: int = 0) -> float:
    """Decay to use after optimizer step `step`: 0 (a plain copy) before `start_step`.

    Starting late keeps the average from being dominated by the random initial weights (Self-Forcing
    starts its EMA at iteration 200, critic updates included).
    """
    return 0.0 if step < start_step else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    ema_params = list(ema.parameters())
    params = list(model.parameters())
    if len(ema_params) != len(params):
        raise RuntimeError("EMA copy and model have different parameter lists")
    for e, p in zip(ema_params, params):
        if e.is_meta:
            continue
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        if not eb.is_meta:
            eb.copy_(b)
