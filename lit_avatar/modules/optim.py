"""What the stages' injected optimizers and schedules share: decay on matrices only, and a linear warm-up.

The modules take `OptimizerCallable` / `LRSchedulerCallable`, so an experiment YAML names any torch optimizer
and schedule; these are the pieces their defaults and the YAMLs use.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lit_avatar.errors import UserError

# The types of lightning.pytorch.cli's OptimizerCallable and LRSchedulerCallable (its ReduceLROnPlateau is a
# subclass of torch's), spelled here: that module imports jsonargparse, which the bare GPU machine lacks
# (bench/gpu.sh), and the training modules must import there.
OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[[torch.optim.Optimizer], LRScheduler | ReduceLROnPlateau]


def param_groups(model: nn.Module) -> list[dict]:
    """The trainable parameters of `model` in two groups: weight matrices, which take the optimizer's own
    weight decay, then biases, norms and other 1-D scales at weight decay 0 (decaying those only hurts)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def dmd_generator_adamw(params) -> torch.optim.AdamW:
    """Self-Forcing's generator optimizer (REFERENCE.md): AdamW, lr 2e-6, betas (0, 0.999), weight decay 0.01.

    A named function rather than a lambda: jsonargparse can show and store a lambda default only when all its
    arguments are plain constants, and betas is a tuple.
    """
    return torch.optim.AdamW(params, lr=2e-6, betas=(0.0, 0.999), weight_decay=0.01)


def dmd_critic_adamw(params) -> torch.optim.AdamW:
    """Self-Forcing's critic optimizer (REFERENCE.md): AdamW, lr 4e-7, betas (0, 0.999), weight decay 0.01.

    No momentum: the critic's target moves with the generator every step.
    """
    return torch.optim.AdamW(params, lr=4e-7, betas=(0.0, 0.999), weight_decay=0.01)


def _warmup_factor(warmup_steps: int):
    def factor(step: int) -> float:
        return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)

    return factor


class LinearWarmup(torch.optim.lr_scheduler.LambdaLR):
    """Ramp the learning rate from lr/warmup_steps to lr over `warmup_steps` steps, then hold it.

    Adam's second-moment estimate is poor in the first steps; the ramp keeps them from taking full-size
    updates in random directions. Step it every optimizer step. torch's LinearLR draws the same line but
    multiplies its way along it (last bits differ) and has no 0-step form; this is the exact ratio, and its
    state_dict is that of the LambdaLR the stages used before, so their checkpoints resume unchanged.

    Args:
        optimizer: the optimizer whose every group is scaled.
        warmup_steps: steps to the full learning rate; 0 starts at it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int) -> None:
        if warmup_steps < 0:
            raise UserError(f"LinearWarmup.warmup_steps: expected >= 0, got {warmup_steps}")
        super().__init__(optimizer, _warmup_factor(int(warmup_steps)))


def optimizer_config(model: nn.Module, make_optimizer: OptimizerCallable,
                     make_lr_scheduler: LRSchedulerCallable | None = None) -> dict:
    """configure_optimizers' answer for one trained network: its optimizer over `param_groups(model)` and,
    when given, its schedule stepped every optimizer step."""
    optimizer = make_optimizer(param_groups(model))
    if make_lr_scheduler is None:
        return {"optimizer": optimizer}
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": make_lr_scheduler(optimizer), "interval": "step"}}
