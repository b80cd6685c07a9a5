"""The Euler ODE sampler for flow matching."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """Integrate dx/ds = v(x, s) from sigmas[0] to sigmas[-1] with explicit Euler steps.

    On a straight flow path one Euler step is exact, so a well-trained model needs few steps; the
    schedule decides where the steps go.

    Args:
        denoiser: called as denoiser(x, s) with s a [B] tensor of noise levels; returns the velocity.
            Guidance (CFG) is composed into it by the caller.
        noise: starting point x at sigmas[0] (usually pure noise at s = 1).
        sigmas: decreasing noise levels [n + 1], typically from `shifted_schedule` or `psb_step_lists`.
        progress: optional wrapper around the step iterator (e.g. tqdm).

    Returns:
        x at sigmas[-1].
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas: expected a 1-D tensor with at least 2 entries, got shape {tuple(sigmas.shape)}")
    x = noise
    sigmas = sigmas.to(device=noise.device, dtype=torch.float32)
    steps = range(sigmas.numel() - 1)
    for i in progress(steps) if progress is not None else steps:
        s, s_next = sigmas[i], sigmas[i + 1]
        v = denoiser(x, s.expand(x.shape[0]))
        x = x + (s_next - s).to(x.dtype) * v
    return x
