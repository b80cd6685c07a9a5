"""Typed options of the block loop: PSB, MCI, URCR (definitions in DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lit_avatar.errors import UserError


@dataclass
class PSBOptions:
    """Progressive Step Bootstrapping.

    Args:
        enabled: off -> every block uses the last entry of `steps`.
        steps: denoising steps per block index, e.g. [8, 6, 4]; the last repeats for later blocks.
    """

    enabled: bool = True
    steps: list[int] = field(default_factory=lambda: [8, 6, 4])

    def steps_for(self, block: int) -> int:
        return self.steps[min(block, len(self.steps) - 1)] if self.enabled else self.steps[-1]


@dataclass
class MCIOptions:
    """Motion Condition Injection.

    Args:
        enabled: off -> the context is written clean, at s = 0 (Self-Forcing's default).
        frames: latent frames of generated history kept as the motion context.
        sigma: noise level s_m of the context at inference.
        min: lower bound of s_m drawn per block in training.
        max: upper bound of s_m drawn per block in training.
    """

    enabled: bool = True
    frames: int = 3
    sigma: float = 0.1
    min: float = 0.0
    max: float = 0.3


@dataclass
class URCROptions:
    """Unbounded RoPE via Cache-Resetting.

    Args:
        enabled: off -> absolute positions grow without bound over a rolling window (RoPE extrapolation).
        max_frames: largest RoPE time position + 1 a generated frame may take (the trained horizon).
        keep_frames: latent frames re-encoded from position 0 after a reset.
    """

    enabled: bool = True
    max_frames: int = 21
    keep_frames: int = 3


@dataclass
class RolloutOptions:
    """The block loop shared by self-forcing training and streaming inference.

    Args:
        frames_per_block: latent frames denoised together.
        shift: timestep shift of the one schedule all step lists are taken from.
        sampler: "renoise" (x0 prediction, fresh noise at the next level: Self-Forcing) or "euler" (ODE).
        context_frames: KV-cache window in latent frames; default: mci.frames.
        psb: Progressive Step Bootstrapping.
        mci: Motion Condition Injection.
        urcr: Unbounded RoPE via Cache-Resetting.
    """

    frames_per_block: int = 3
    shift: float = 5.0
    sampler: Literal["renoise", "euler"] = "renoise"
    context_frames: int | None = None
    psb: PSBOptions = field(default_factory=PSBOptions)
    mci: MCIOptions = field(default_factory=MCIOptions)
    urcr: URCROptions = field(default_factory=URCROptions)

    def __post_init__(self) -> None:
        if self.frames_per_block < 1:
            raise UserError(f"rollout.frames_per_block: expected >= 1, got {self.frames_per_block}")
        if not self.psb.steps or min(self.psb.steps) < 1:
            raise UserError(f"rollout.psb.steps: expected positive step counts, got {self.psb.steps}")
        if not 0.0 <= self.mci.min <= self.mci.max < 1.0 or not 0.0 <= self.mci.sigma < 1.0:
            raise UserError("rollout.mci: expected 0 <= min <= max < 1 and 0 <= sigma < 1")
        if self.mci.frames < 1:
            raise UserError(f"rollout.mci.frames: expected >= 1, got {self.mci.frames}")
        if self.urcr.keep_frames + self.frames_per_block > self.urcr.max_frames:
            raise UserError(
                f"rollout.urcr: keep_frames ({self.urcr.keep_frames}) + frames_per_block "
                f"({self.frames_per_block}) must not exceed max_frames ({self.urcr.max_frames})"
            )
        if self.sampler not in ("renoise", "euler"):
            raise UserError(f"rollout.sampler: expected 'renoise' or 'euler', got {self.sampler!r}")

    @property
    def window(self) -> int:
        return self.context_frames if self.context_frames is not None else self.mci.frames
