"""Drive THE rollout (lit_avatar.inference.rollout.Rollout) over a whole clip: one call per block.

Training (with exit steps), validation samples and the ablation runs all go through this, so they share
the block loop with streaming inference; nothing here denoises by itself.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lit_avatar.inference.options import RolloutOptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import ClipConditions
from lit_avatar.seeding import generator_on


def block_step_counts(options: RolloutOptions, num_blocks: int) -> list[int]:
    """Denoising steps of each block under the options' PSB list."""
    return [options.psb.steps_for(i) for i in range(num_blocks)]


def rollout_clip(model: nn.Module, options: RolloutOptions, conds: ClipConditions, shape: tuple[int, ...],
                 exit_steps: list[int] | None = None, generator: torch.Generator | None = None,
                 training: bool = False) -> tuple[torch.Tensor, Rollout]:
    """Generate latents of `shape` [B,C,t,h,w] block by block.

    Args:
        model: the causal generator (AvatarDiT).
        options: PSB/MCI/URCR and block size.
        conds: audio features covering the t latent frames, reference latent, text.
        shape: latents to produce; t is rounded up to whole blocks and cropped back.
        exit_steps: per block, the step whose x0 carries the gradient (training); None: all steps.
        generator: CPU generator of the starting noise and (directly or as the seed of one on the model's
            device) of the rollout's own draws.
        training: the rollout draws MCI context levels from [mci.min, mci.max].

    Returns:
        (latents [B,C,t,h,w], the Rollout with its per-block records).
    """
    b, c, t, h, w = shape
    fpb = options.frames_per_block
    num_blocks = math.ceil(t / fpb)
    device = next(model.parameters()).device
    rollout = Rollout(model, options, training=training)
    # The rollout's own draws (MCI level, renoising) need a generator on the model's device: on an
    # accelerator it is seeded from the given one, so they still derive from (seed, step, rank).
    rollout.begin(conds.ref, conds.text, b, (h, w), generator=generator_on(device, generator))
    tokens = model.audio_tokens(conds.audio) if conds.audio is not None else None
    if tokens is not None and tokens.shape[1] < num_blocks * fpb:
        pad = tokens[:, -1:].expand(-1, num_blocks * fpb - tokens.shape[1], -1, -1)
        tokens = torch.cat([tokens, pad], dim=1)  # a last partial block reuses the final frame's audio
    blocks = []
    for i in range(num_blocks):
        noise = torch.randn((b, c, fpb, h, w), generator=generator).to(device)
        audio = None if tokens is None else tokens[:, i * fpb:(i + 1) * fpb]
        exit_step = None if exit_steps is None else exit_steps[i]
        blocks.append(rollout.next_block(audio, noise=noise, exit_step=exit_step))
    return torch.cat(blocks, dim=2)[:, :, :t], rollout
