"""What the teacher draws per sample besides its noise level: which conditions it trains without (for CFG)
and which clips get a motion prefix at a small noise level (Motion Condition Injection; DESIGN.md)."""
from __future__ import annotations

import torch

from lit_avatar.errors import UserError
from lit_avatar.modules.conditions import drop_conditions


def _probability(key: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise UserError(f"{key}: expected a probability in [0, 1], got {p}")
    return p


class ConditionDropout:
    """Null conditions at random, so one network also learns the predictions CFG subtracts.

    Args:
        audio: per-sample probability of training with null (zero) audio, for audio CFG.
        ref: per-sample probability of a null (zero) reference latent, for reference CFG.
        text: per-batch probability of the learned null text (None), when batches carry `text`.
        unconditional: per-sample probability of dropping every condition at once (the unconditional
            prediction that guidance subtracts most).
    """

    def __init__(self, audio: float = 0.1, ref: float = 0.1, text: float = 0.1, unconditional: float = 0.05) -> None:
        key = "model.condition_dropout."
        self.audio = _probability(key + "audio", audio)
        self.ref = _probability(key + "ref", ref)
        self.text = _probability(key + "text", text)
        self.unconditional = _probability(key + "unconditional", unconditional)

    def __call__(self, audio: torch.Tensor | None, ref: torch.Tensor | None, text: torch.Tensor | None,
                 generator: torch.Generator | None = None) -> tuple:
        return drop_conditions(audio, ref, text, self.audio, self.ref, self.text, self.unconditional, generator)


class MotionPrefix:
    """The first latent frames of some clips as a motion prefix: corrupted to a small level s_m rather than the
    sample's level and left out of the loss, so the teacher learns to continue motion.

    Args:
        frames: latent frames at the clip's head given as a prefix (0 = off; at most all frames but one).
        prob: fraction of training samples that get a prefix.
        sigma_min: lowest prefix noise level s_m.
        sigma_max: highest prefix noise level s_m.
    """

    def __init__(self, frames: int = 0, prob: float = 0.5, sigma_min: float = 0.0, sigma_max: float = 0.3) -> None:
        if frames < 0:
            raise UserError(f"model.motion_prefix.frames: expected >= 0, got {frames}")
        if not 0.0 <= sigma_min <= sigma_max <= 1.0:
            raise UserError("model.motion_prefix: expected 0 <= sigma_min <= sigma_max <= 1, "
                            f"got {sigma_min}, {sigma_max}")
        self.frames, self.prob = frames, _probability("model.motion_prefix.prob", prob)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def apply(self, sigma_frames: torch.Tensor, frame_mask: torch.Tensor,
              generator: torch.Generator | None = None) -> None:
        """Set the prefix frames' levels in `sigma_frames` [B,t] and zero their weight in `frame_mask` [B,t]."""
        b, t = sigma_frames.shape
        m = min(self.frames, t - 1)
        if m <= 0:
            return
        device = sigma_frames.device
        has_prefix = (torch.rand(b, generator=generator) < self.prob).to(device)
        s_m = (self.sigma_min + (self.sigma_max - self.sigma_min) * torch.rand(b, generator=generator)).to(device)
        sigma_frames[:, :m] = torch.where(has_prefix[:, None], s_m[:, None], sigma_frames[:, :m])
        frame_mask[:, :m] = torch.where(has_prefix[:, None], 0.0, 1.0)
