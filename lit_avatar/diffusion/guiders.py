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


def batch_text(text: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A prompt embedding [1, L, D] (one negative prompt) repeated to [batch, L, D]; [batch, L, D] as it is."""
    if text is None or text.shape[0] == batch:
        return text
    return text.expand(batch, *text.shape[1:])


class AvatarGuidance:
    """Guidance for the avatar DiT with separate reference, audio and text scales.

    Builds the denoiser (x, s) -> v that `sample_euler` calls. Conditions nest as InfiniteTalk/OmniAvatar
    sample them, with the reference innermost (as before text had its own scale):

        v = null + ref (no_audio - null) + audio (no_text - no_audio) + text (full - no_text)

    where full = (audio, ref, text), no_text = (audio, ref, negative), no_audio = (0, ref, negative),
    null = (0, 0, negative), and `negative` is the negative prompt's embedding, else the learned null text.
    With ref_scale 1 this is InfiniteTalk's `uncond + text (cond - drop_text) + audio (drop_text - uncond)`.

    text_scale 1 (or no text) keeps the text in every pass but the unconditional one, exactly the two-scale
    guidance without text scale: v = null + ref (no_audio - null) + audio (full - no_audio), with
    no_audio = (0, ref, text) and null = (0, 0, null text). Passes whose scale makes them cancel are
    skipped: no_text when text_scale = 1, null when ref_scale = 1, no_audio when audio_scale = ref_scale = 1
    (the chain still needs it when only audio_scale is 1).

    Args:
        audio_scale: weight of the audio increment.
        ref_scale: weight of the reference increment (with text_scale 1: reference and text together).
        text_scale: weight of the text increment (text over the negative prompt or null text); 1 = text is
            not guided on its own.
    """

    def __init__(self, audio_scale: float = 1.0, ref_scale: float = 1.0, text_scale: float = 1.0) -> None:
        self.audio_scale = float(audio_scale)
        self.ref_scale = float(ref_scale)
        self.text_scale = float(text_scale)

    def guides_text(self, text: torch.Tensor | None) -> bool:
        """Whether text gets its own increment (a text is given and text_scale is not 1)."""
        return text is not None and self.text_scale != 1.0

    def forwards(self, with_text: bool = False) -> int:
        """Model forwards per velocity, for a sample with a text (`with_text`) or without."""
        passes = 1 + (self.audio_scale != 1.0 or self.ref_scale != 1.0) + (self.ref_scale != 1.0)
        return passes + (with_text and self.text_scale != 1.0)

    def velocity(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        timestep: torch.Tensor,
        audio: torch.Tensor | None,
        ref: torch.Tensor | None,
        text: torch.Tensor | None = None,
        negative_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Guided velocity; null conditions are zeros for audio/ref and None for text (INTERFACES.md).

        Args:
            negative_text: [1 or B, L, D] embedding that replaces the text where text is dropped (only with a
                text and text_scale != 1); None: the learned null text.
        """
        full = model(x, timestep, audio=audio, ref=ref, text=text)
        if self.guides_text(text):
            return self._with_text(full, model, x, timestep, audio, ref, batch_text(negative_text, x.shape[0]))
        if self.audio_scale == 1.0 and self.ref_scale == 1.0:
            return full
        null_audio = None if audio is None else torch.zeros_like(audio)
        no_audio = model(x, timestep, audio=null_audio, ref=ref, text=text)
        if self.ref_scale == 1.0:
            return cfg(full, no_audio, self.audio_scale)
        null_ref = None if ref is None else torch.zeros_like(ref)
        null = model(x, timestep, audio=null_audio, ref=null_ref, text=None)
        return chained_cfg([null, no_audio, full], [self.ref_scale, self.audio_scale])

    def _with_text(self, full, model, x, timestep, audio, ref, negative) -> torch.Tensor:
        """The chain with text outermost: [null, no_audio, no_text, full] over [ref, audio, text]."""
        no_text = model(x, timestep, audio=audio, ref=ref, text=negative)
        if self.audio_scale == 1.0 and self.ref_scale == 1.0:
            return cfg(full, no_text, self.text_scale)
        null_audio = None if audio is None else torch.zeros_like(audio)
        no_audio = model(x, timestep, audio=null_audio, ref=ref, text=negative)
        if self.ref_scale == 1.0:
            return chained_cfg([no_audio, no_text, full], [self.audio_scale, self.text_scale])
        null_ref = None if ref is None else torch.zeros_like(ref)
        null = model(x, timestep, audio=null_audio, ref=null_ref, text=negative)
        return chained_cfg([null, no_audio, no_text, full], [self.ref_scale, self.audio_scale, self.text_scale])

    def denoiser(self, model, audio=None, ref=None, text=None, negative_text=None):
        """Bind the conditions: returns (x, s) -> v with the timestep convention t = 1000 s."""

        def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return self.velocity(model, x, s * 1000.0, audio, ref, text, negative_text)

        return fn
