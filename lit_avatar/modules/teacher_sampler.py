"""The one way the bidirectional teacher samples a clip: guided Euler steps on its shifted schedule.

TeacherModule.sample (validation samples) and the demo's teacher check and speed comparison both call it
with the settings the teacher was trained with (its checkpoint's hyper-parameters), so no caller carries
its own shift or guidance.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_avatar.diffusion import AvatarGuidance, sample_euler, shifted_schedule
from lit_avatar.models.dit import ClipConditions


@dataclass(frozen=True)
class TeacherSampler:
    """Euler steps on `shifted_schedule(steps, shift)` with reference, audio and text CFG (AvatarGuidance).

    Args:
        steps: Euler steps per clip.
        shift: timestep shift of the sampling schedule.
        audio_guidance: CFG scale of the audio condition over reference(+text).
        ref_guidance: CFG scale of reference(+text) over no condition; 1 skips the unconditional pass.
        text_guidance: CFG scale of the clip's text over the negative prompt (or the null text), outermost,
            as InfiniteTalk's `sample_text_guide_scale`; 1 (default) keeps text in the reference increment and
            adds no pass. Acts only on clips that have a text (captions or precomputed embeddings).
        negative_prompt: the prompt that replaces the text where text guidance drops it (Wan's negative
            prompt); needs the stage's text encoder. None: the learned null text.
    """

    steps: int = 16
    shift: float = 3.0
    audio_guidance: float = 2.0
    ref_guidance: float = 1.0
    text_guidance: float = 1.0
    negative_prompt: str | None = None

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], steps: int | None = None) -> TeacherSampler:
        """The sampler a TeacherModule with these hyper-parameters uses (its checkpoint stores them: as the
        `sampler` dict of `hparams()`, or, in checkpoints written before the sampler was injected, flat)."""
        saved = hparams.get("sampler")
        if isinstance(saved, Mapping):
            return cls(**{**saved, "steps": int(steps or saved["steps"])})
        return cls(steps=int(steps or hparams.get("sample_steps", cls.steps)),
                   shift=float(hparams.get("sample_shift", cls.shift)),
                   audio_guidance=float(hparams.get("audio_guidance", cls.audio_guidance)),
                   ref_guidance=float(hparams.get("ref_guidance", cls.ref_guidance)))

    def hparams(self) -> dict[str, Any]:
        """What a TeacherModule's checkpoint stores of this sampler: plain values (checkpoints load with
        weights_only=True), read back by `from_hparams` and by LightningCLI when it resumes."""
        return {"sampler": dataclasses.asdict(self)}

    @property
    def guidance(self) -> AvatarGuidance:
        return AvatarGuidance(audio_scale=self.audio_guidance, ref_scale=self.ref_guidance,
                              text_scale=self.text_guidance)

    @property
    def forwards_per_step(self) -> int:
        """Forwards per Euler step for a clip without text (one more with text when text_guidance != 1)."""
        return self.guidance.forwards(with_text=False)

    def describe(self) -> str:
        text = f", text CFG {self.text_guidance:g}" if self.text_guidance != 1.0 else ""
        return (f"{self.steps} Euler steps x {self.forwards_per_step} forwards (shift {self.shift:g}, audio CFG "
                f"{self.audio_guidance:g}, reference CFG {self.ref_guidance:g}{text})")

    @torch.no_grad()
    def latents(self, net: nn.Module, conds: ClipConditions, noise: torch.Tensor,
                progress: Callable | None = None, negative_text: torch.Tensor | None = None) -> torch.Tensor:
        """Clean latents [B,C,t,h,w] from `noise` of that shape under `conds`; `negative_text` [1, L, D] is the
        negative prompt's embedding (the caller holds the text encoder)."""
        denoiser = self.guidance.denoiser(net, conds.audio, conds.ref, conds.text, negative_text)
        return sample_euler(denoiser, noise, shifted_schedule(self.steps, self.shift), progress=progress)
