"""Classifier-free guidance, as small pieces that compose with the sampler's denoiser callable."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def cfg(cond_v: torch.Tensor, uncond_v: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale (cond - uncond); scale 1 returns the conditional prediction."""
    return uncond_v + scale * (cond_v - uncond_v)


def chained_cfg(preds: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """Guidance over nested conditions, each scaled separately.

    preds[0] has no condition, preds[i] adds the i-th condition to preds[i-1]'s, and scales[i-1] weighs
    that increment: v = preds[0] + sum_i scales[i-1] (preds[i] - preds[i-1]). With one condition this is
    `cfg`. For avatars: [null, reference (+text), reference + audio] with [ref_scale, audio_scale], so lip
    sync can be pushed harder than identity (the split of InstructPix2Pix / OmniAvatar guidance).
    """
    if len(preds) != len(scales) + 1:
        raise ValueError(f"chained_cfg: expected len(preds) == len(scales) + 1, got {len(preds)} and {len(scales)}")
    out = preds[0]
    for i, scale in enumerate(scales):
        out = out + scale * (preds[i + 1] - preds[i])
    return out


class AvatarGuidance:
    """Two-scale guidance for the avatar DiT: audio on top of reference/text.

    Builds the denoiser (x, s) -> v that `sample_euler` calls. Forwards whose scale is 1 are skipped:
    ref_scale = 1 needs no unconditional pass, and audio_scale = ref_scale = 1 is a single pass.

    Args:
        audio_scale: weight of the audio increment (ref + audio) - (ref).
        ref_scale: weight of the reference/text increment (ref) - (null).
    """

    def __init__(self, audio_scale: float = 1.0, ref_scale: float = 1.0) -> None:
        self.audio_scale = float(audio_scale)
        self.ref_scale = float(ref_scale)

    def velocity(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        timestep: torch.Tensor,
        audio: torch.Tensor | None,
        ref: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Guided velocity; null conditions are zeros for audio/ref and None for text (INTERFACES.md)."""
        full = model(x, timestep, audio=audio, ref=ref, text=text)
        if self.audio_scale == 1.0 and self.ref_scale == 1.0:
            return full
        null_audio = None if audio is None else torch.zeros_like(audio)
        no_audio = model(x, timestep, audio=null_audio, ref=ref, text=text)
        if self.ref_scale == 1.0:
            return cfg(full, no_audio, self.audio_scale)
        null_ref = None if ref is None else torch.zeros_like(ref)
        null = model(x, timestep, audio=null_audio, ref=null_ref, text=None)
        return chained_cfg([null, no_audio, full], [self.ref_scale, self.audio_scale])

    def denoiser(self, model, audio=None, ref=None, text=None):
        """Bind the conditions: returns (x, s) -> v with the timestep convention t = 1000 s."""

        def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return self.velocity(model, x, s * 1000.0, audio, ref, text)

        return fn
