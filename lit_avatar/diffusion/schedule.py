"""Sampling schedules: shifted sigma lists and the Progressive Step Bootstrapping (PSB) step lists."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_avatar.diffusion.flow import shift_sigma


def shifted_schedule(num_steps: int, shift: float = 1.0, last_sigma: float | None = None) -> torch.Tensor:
    """Noise levels for `num_steps` Euler steps: float32 [num_steps + 1], from 1 down to exactly 0.

    Args:
        num_steps: number of denoising steps (network evaluations).
        shift: timestep shift k (see `shift_sigma`).
        last_sigma: unshifted level of the last step before the final jump to 0. None spaces the unshifted
            levels evenly over [1, 0] (Wan / Self-Forcing: 4 steps at shift 5 give t = 1000, 937, 833, 625).
            diffusers' FlowMatchEulerDiscreteScheduler instead spaces them over [1, sigma_min] with
            sigma_min = shift_sigma(1 / 1000, k); pass that value to reproduce it exactly.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
    if last_sigma is None:
        base = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    else:
        if not 0.0 <= last_sigma < 1.0:
            raise ValueError(f"last_sigma: expected in [0, 1), got {last_sigma}")
        base = torch.cat([torch.linspace(1.0, last_sigma, num_steps, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64)])
    return shift_sigma(base, shift).to(torch.float32)


def subset_indices(total_steps: int, num_steps: int) -> list[int]:
    """Which entries of a `total_steps`-step schedule a `num_steps`-step run visits.

    Indices are evenly spaced over 0..total_steps (rounded to the nearest integer), so they always include
    the first (pure noise) and the last (clean) entries, and are strictly increasing because
    num_steps <= total_steps keeps their spacing >= 1.
    """
    if not 1 <= num_steps <= total_steps:
        raise ValueError(f"num_steps: expected 1..{total_steps}, got {num_steps}")
    return [round(i * total_steps / num_steps) for i in range(num_steps + 1)]


def psb_levels(steps: Sequence[int], shift: float = 1.0) -> torch.Tensor:
    """The one schedule every PSB step list is a subset of: float32 [max(steps) + 1], 1 -> 0.

    Args:
        steps: PSB step counts per block index (see `psb_step_lists`).
        shift: timestep shift.
    """
    return shifted_schedule(max(steps), shift)


def psb_level_indices(steps: Sequence[int], num_steps: int) -> list[int]:
    """The entries of `psb_levels(steps)` that a block denoised with `num_steps` steps visits, from pure
    noise (0) to clean (max(steps)).

    Args:
        steps: PSB step counts per block index.
        num_steps: the block's step count.
    """
    return subset_indices(max(steps), num_steps)


def psb_step_lists(steps: Sequence[int], shift: float = 1.0, num_blocks: int | None = None) -> list[torch.Tensor]:
    """Per-block sigma lists for Progressive Step Bootstrapping.

    Block i is denoised with n_min(i, k) steps, where steps = [n0, ..., nk]: the first blocks, which have
    no motion history to lean on, get more steps; later blocks reuse the last value. All lists are subsets
    of ONE schedule, `shifted_schedule(max(steps), shift)`, taken with `subset_indices`, so every block
    visits noise levels the shared schedule trains and a block with fewer steps simply skips some of them.
    With steps = [n] PSB is off: every block uses the same list.

    Args:
        steps: step counts per block index; the last one repeats for all later blocks.
        shift: timestep shift of the shared schedule.
        num_blocks: how many per-block lists to return; default len(steps).

    Returns:
        list of float32 tensors [n_i + 1], each from 1 to 0.
    """
    steps = [int(n) for n in steps]
    if not steps or min(steps) < 1:
        raise ValueError(f"steps: expected a non-empty list of positive step counts, got {steps}")
    num_blocks = len(steps) if num_blocks is None else num_blocks
    levels = psb_levels(steps, shift)
    return [levels[psb_level_indices(steps, steps[min(i, len(steps) - 1)])] for i in range(num_blocks)]
