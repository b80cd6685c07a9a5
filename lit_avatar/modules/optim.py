"""AdamW with decoupled weight decay on matrices only, and a linear warm-up."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices, not biases, norms or embeddings' 1-D scales (decaying those only hurts)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_adamw(
    model: nn.Module, lr: float, betas: Iterable[float] = (0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model`."""
    b1, b2 = tuple(betas)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(b1, b2), eps=eps)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Ramp the learning rate from lr/warmup_steps to lr over `warmup_steps` steps, then hold it.

    Adam's second-moment estimate is poor in the first steps; the ramp keeps them from taking
    full-size updates in random directions.
    """
    warmup_steps = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
