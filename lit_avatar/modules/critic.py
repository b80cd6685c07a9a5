"""The critic (fake score) of DMD: a bidirectional copy of the teacher that keeps learning the
distribution the generator currently produces, by plain flow matching on detached generator samples.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lit_avatar.diffusion import SigmaSampler, add_noise, to_timestep, velocity_target
from lit_avatar.models.dit import ClipConditions
from lit_avatar.modules.losses import weighted_mse


def critic_from_teacher(teacher: nn.Module) -> nn.Module:
    """A trainable deep copy: the critic starts as the teacher, so at step 0 pred_fake = pred_real (without
    CFG) and the DMD gradient is pure guidance."""
    critic = copy.deepcopy(teacher)
    critic.requires_grad_(True)
    critic.train()
    return critic


def critic_flow_loss(critic: nn.Module, samples: torch.Tensor, conds: ClipConditions, sigma_sampler: SigmaSampler,
                     generator: torch.Generator | None = None,
                     spatial_weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean((v_pred - (eps - x0))^2) on generator samples x0 (detached here), optionally mouth-weighted.

    Args:
        critic: the network trained.
        samples: generator outputs [B,C,t,h,w].
        conds: their conditions (the critic is conditional like the teacher, no dropout: it has no CFG).
        sigma_sampler: noise-level distribution (the DMD one, so the critic is accurate where it is read).
        generator: CPU generator for noise levels and noise.
        spatial_weight: [B,h,w] per-cell weights (losses.box_weight_map), or None.
    """
    x0 = samples.detach()
    sigma = sigma_sampler(x0.shape[0], generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    v = critic(add_noise(x0, noise, sigma), to_timestep(sigma), **conds.as_kwargs())
    return weighted_mse(v, velocity_target(x0, noise), spatial_weight)
