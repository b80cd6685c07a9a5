"""Rectified-flow noising and targets (DESIGN.md conventions).

The noise level s in [0, 1] interpolates linearly between data (s = 0) and Gaussian noise (s = 1), and
the network predicts the constant velocity of that straight path. Everything else in the package is
expressed through these few lines, so the convention lives in one place.
"""
from __future__ import annotations

import torch

#: Wan and the flow-matching schedulers scale s by this to get the network's timestep input.
NUM_TRAIN_TIMESTEPS = 1000


def _expand_like(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a noise level given per sample [B], per frame [B, t] or as a scalar over x [B, C, t, ...].

    Per-frame levels follow the video layout [B, C, t, h, w], where the frame axis is dim 2.
    """
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s
    if s.ndim == 1:
        return s.reshape(-1, *([1] * (x.ndim - 1)))
    if s.ndim == 2:
        return s.reshape(s.shape[0], 1, s.shape[1], *([1] * (x.ndim - 3)))
    raise ValueError(f"noise level must be a scalar, [B] or [B, t]; got shape {tuple(s.shape)}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps. `s` is a scalar, [B] or per latent frame [B, t]."""
    s = _expand_like(s, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = eps - x0 (independent of s on a straight path)."""
    return noise - x0


def x0_from_velocity(xs: torch.Tensor, v: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """The clean estimate implied by a velocity: x0 = x_s - s v (used by DMD and ODE init)."""
    return xs - _expand_like(s, xs) * v


def noise_from_velocity(xs: torch.Tensor, v: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """The noise estimate implied by a velocity: eps = x_s + (1 - s) v."""
    return xs + (1 - _expand_like(s, xs)) * v


def shift_sigma(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Warp noise levels towards 1: s' = k s / (1 + (k - 1) s).

    A shift k > 1 spends more training and sampling effort at high noise, where the coarse layout (and
    for avatars the head pose and mouth shape) is decided; large latents need it because their
    low frequencies survive more noise. k = 1 is the identity; 0 and 1 are fixed points.
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def to_timestep(s: torch.Tensor | float) -> torch.Tensor | float:
    """Network timestep input t = 1000 s (Wan's convention)."""
    return s * NUM_TRAIN_TIMESTEPS
