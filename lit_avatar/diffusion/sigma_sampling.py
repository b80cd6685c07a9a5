"""Noise-level distributions for training, one value per sample.

Flow-matching models are sensitive to where training spends its samples: logit-normal (SD3) puts more
weight in the middle, and the shift moves mass towards high noise to match a shifted sampling schedule.
"""
from __future__ import annotations

from typing import Literal

import torch

from lit_avatar.diffusion.flow import shift_sigma

SigmaDistribution = Literal["uniform", "logit_normal"]


class SigmaSampler:
    """Draws training noise levels s in [0, 1]: a base distribution, then the shift, then a clamp.

    Args:
        distribution: "uniform" on [0, 1] or "logit_normal" (sigmoid of a normal draw).
        shift: timestep shift k applied after drawing (1 = none). Match the sampling schedule's shift.
        loc: mean of the normal for "logit_normal".
        scale: standard deviation of the normal for "logit_normal".
        min_sigma: lower clamp; keeps the loss away from s = 0 where the target is pure noise minus data
            and carries no learnable signal about the noise.
        max_sigma: upper clamp.
    """

    def __init__(
        self,
        distribution: SigmaDistribution = "uniform",
        shift: float = 1.0,
        loc: float = 0.0,
        scale: float = 1.0,
        min_sigma: float = 0.0,
        max_sigma: float = 1.0,
    ) -> None:
        if distribution not in ("uniform", "logit_normal"):
            raise ValueError(f"distribution: expected 'uniform' or 'logit_normal', got {distribution!r}")
        if shift <= 0:
            raise ValueError(f"shift: expected > 0, got {shift}")
        if scale <= 0:
            raise ValueError(f"scale: expected > 0, got {scale}")
        if not 0.0 <= min_sigma < max_sigma <= 1.0:
            raise ValueError(f"expected 0 <= min_sigma < max_sigma <= 1, got {min_sigma}, {max_sigma}")
        self.distribution = distribution
        self.shift = shift
        self.loc = loc
        self.scale = scale
        self.min_sigma = min_sigma
        self.max_sigma = max_sigma

    def __call__(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return float32 [batch_size] noise levels."""
        if self.distribution == "uniform":
            base = torch.rand(batch_size, device=device, generator=generator)
        else:
            normal = torch.randn(batch_size, device=device, generator=generator)
            base = torch.sigmoid(self.loc + self.scale * normal)
        return shift_sigma(base, self.shift).clamp(self.min_sigma, self.max_sigma)

    def __repr__(self) -> str:
        return (
            f"SigmaSampler({self.distribution!r}, shift={self.shift}, loc={self.loc}, scale={self.scale}, "
            f"range=[{self.min_sigma}, {self.max_sigma}])"
        )
