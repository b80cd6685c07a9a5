"""Distribution Matching Distillation loss (REFERENCE.md, Self-Forcing's form).

The loss receives the networks it scores (sgm style): the frozen teacher gives the real score with CFG,
the critic the fake score. Both are read as clean-latent predictions x0 = x_t - s v, and the generator
sample is pushed along (pred_real - pred_fake), normalised per sample by how far the teacher's estimate
is from the sample, so the step size does not depend on the noise level drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lit_avatar.diffusion import SigmaSampler, add_noise, to_timestep, x0_from_velocity
from lit_avatar.diffusion.guiders import batch_text
from lit_avatar.models.dit import ClipConditions


def dmd_gradient(x: torch.Tensor, pred_real: torch.Tensor, pred_fake: torch.Tensor) -> torch.Tensor:
    """(pred_fake - pred_real) / mean|x - pred_real|, the mean taken per sample over all other axes.

    Non-finite entries (a sample equal to the teacher's estimate) become 0: no push where there is no
    evidence.
    """
    dims = tuple(range(1, x.ndim))
    normaliser = (x - pred_real).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((pred_fake - pred_real) / normaliser)


def dmd_surrogate(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * MSE(x, stopgrad(x - grad)): its gradient with respect to x is grad / x.numel()."""
    return 0.5 * F.mse_loss(x.float(), (x.detach() - grad).float().detach())


@dataclass
class DMDOutput:
    loss: torch.Tensor
    grad: torch.Tensor
    sigma: torch.Tensor
    pred_real: torch.Tensor
    pred_fake: torch.Tensor


class DMDLoss:
    """The generator's DMD loss.

    Args:
        guidance_scale: g in pred_real = cond + g (cond - uncond) (REFERENCE.md: 3.0).
        shift: timestep shift of the uniform draw of the scoring noise level (5).
        min_timestep: lower clamp in timestep units (20).
        max_timestep: upper clamp in timestep units (980).
        uncond_drops_ref: the unconditional teacher pass also drops the reference (default: only audio,
            so guidance sharpens lip sync without pulling the identity away from the reference).
        text_guidance_scale: g_t of the text, for clips with text: pred_real = cond + g_t (cond - no_text)
            + g (no_text - uncond), no_text and uncond with the negative text (InfiniteTalk's split, in this
            loss's convention s = 1 + g); 0 (default) adds no pass and keeps text in every pass.
    """

    def __init__(self, guidance_scale: float = 3.0, shift: float = 5.0, min_timestep: float = 20.0,
                 max_timestep: float = 980.0, uncond_drops_ref: bool = False, text_guidance_scale: float = 0.0) -> None:
        self.guidance_scale = float(guidance_scale)
        self.uncond_drops_ref = uncond_drops_ref
        self.text_guidance_scale = float(text_guidance_scale)
        self.sigma_sampler = SigmaSampler("uniform", shift=shift, min_sigma=min_timestep / 1000.0,
                                          max_sigma=max_timestep / 1000.0)

    @torch.no_grad()
    def real_x0(self, teacher: nn.Module, xt: torch.Tensor, sigma: torch.Tensor, conds: ClipConditions,
                negative_text: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's guided clean estimate; `negative_text` [1 or B, L, D] stands for the dropped text."""
        t = to_timestep(sigma)
        cond = teacher(xt, t, **conds.as_kwargs())
        if conds.text is not None and self.text_guidance_scale != 0.0:
            negative = ClipConditions(conds.audio, conds.ref, batch_text(negative_text, xt.shape[0]))
            no_text = teacher(xt, t, **negative.as_kwargs())
            pred = cond + self.text_guidance_scale * (cond - no_text)
            if self.guidance_scale != 0.0:
                uncond = teacher(xt, t, **negative.without_audio(drop_ref=self.uncond_drops_ref).as_kwargs())
                pred = pred + self.guidance_scale * (no_text - uncond)
            return x0_from_velocity(xt, pred, sigma)
        if self.guidance_scale != 0.0:
            uncond = teacher(xt, t, **conds.without_audio(drop_ref=self.uncond_drops_ref).as_kwargs())
            cond = cond + self.guidance_scale * (cond - uncond)
        return x0_from_velocity(xt, cond, sigma)

    @torch.no_grad()
    def fake_x0(self, critic: nn.Module, xt: torch.Tensor, sigma: torch.Tensor, conds: ClipConditions) -> torch.Tensor:
        return x0_from_velocity(xt, critic(xt, to_timestep(sigma), **conds.as_kwargs()), sigma)

    def __call__(self, x: torch.Tensor, teacher: nn.Module, critic: nn.Module, conds: ClipConditions,
                 generator: torch.Generator | None = None, negative_text: torch.Tensor | None = None) -> DMDOutput:
        """Score the generator sample x [B,C,t,h,w] (with its graph) and return the surrogate loss.

        Args:
            x: generator output, differentiable.
            teacher: frozen bidirectional network (real score).
            critic: bidirectional network trained on generator samples (fake score).
            conds: the clip's conditions.
            generator: CPU generator for the noise level and noise (reproducible, resumable draws).
            negative_text: the negative prompt's embedding for text guidance (None: the null text).
        """
        b = x.shape[0]
        sigma = self.sigma_sampler(b, generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        with torch.no_grad():
            xt = add_noise(x.detach(), noise, sigma)
            pred_real = self.real_x0(teacher, xt, sigma, conds, negative_text).float()
            pred_fake = self.fake_x0(critic, xt, sigma, conds).float()
            grad = dmd_gradient(x.detach().float(), pred_real, pred_fake)
        return DMDOutput(dmd_surrogate(x, grad), grad, sigma, pred_real, pred_fake)
