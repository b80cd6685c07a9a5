"""The real layout (issue 19): training attention equals the rollout's cached attention with a window shorter
than the clip, seams counted on Wan's causal grid, and every stage run end to end at micro width."""
from __future__ import annotations

import pytest
import torch

from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset


def _micro_model() -> AvatarDiT:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    for block in model.blocks:  # non-zero audio outputs: the frame-local audio path is part of the comparison
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    return model


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("mci", [False, True])
def test_training_forward_equals_rollout_cache_block_by_block(window, mci):
    """The student's full-sequence training forward (teacher-forced context, as ODE init calls it) gives, block
    by block, what the rollout's KV-cached forward gives on the same inputs: the cache holds `window` frames
    (shorter than the clip) written at the MCI level, and no block sees more than that."""
    model = _micro_model()
    b, c, h, w, fpb, blocks = 2, 12, 8, 8, 2, 4
    f = fpb * blocks
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(b, c, f, h, w, generator=g)
    noisy = torch.randn(b, c, f, h, w, generator=g)
    ref = torch.randn(b, c, 1, h, w, generator=g)
    feats = torch.randn(b, f, 5, 16, generator=g)
    levels = torch.rand(b, blocks, generator=g).repeat_interleave(fpb, dim=1)  # per block and sample
    ctx_levels = (0.3 * torch.rand(b, blocks, generator=g) if mci else torch.zeros(b, blocks)).repeat_interleave(
        fpb, dim=1)
    s = ctx_levels[:, None, :, None, None]
    context = (1 - s) * clean + s * torch.randn(clean.shape, generator=g)
    options = RolloutOptions(frames_per_block=fpb, context_frames=window, psb=PSBOptions(steps=[2]),
                             mci=MCIOptions(enabled=mci), urcr=URCROptions(max_frames=f, keep_frames=0))
    rollout = Rollout(model, options)
    assert options.window == window < f
    with torch.no_grad():
        full = model(noisy, 1000 * levels, audio=feats, ref=ref, frames_per_block=fpb, window=options.window,
                     context=context, context_timestep=1000 * ctx_levels)
        tokens = model.audio_tokens(feats)
        rollout.begin(ref, None, b, (h, w))
        for i in range(blocks):
            sl = slice(i * fpb, (i + 1) * fpb)
            positions = list(range(sl.start, sl.stop))
            cached = model.forward_cached(noisy[:, :, sl], 1000 * levels[:, sl], positions, rollout.cache,
                                          tokens[:, sl])
            assert (full[:, :, sl] - cached).abs().max().item() <= 1e-5, f"block {i}"
            model.forward_cached(context[:, :, sl], 1000 * ctx_levels[:, sl], positions, rollout.cache,
                                 tokens[:, sl], write_frames=positions)
        assert rollout.cache.num_frames == window
