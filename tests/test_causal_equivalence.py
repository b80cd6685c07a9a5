"""Block-by-block KV-cached generation equals one block-causal masked forward; URCR bounds positions."""
from __future__ import annotations

import torch

from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset


def _model(**overrides) -> AvatarDiT:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro", **overrides)).eval()
    # Non-zero audio outputs, so the frame-local audio path is part of the comparison.
    for block in model.blocks:
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    return model


def test_cached_blocks_equal_masked_full_forward():
    model = _model()
    b, c, h, w, fpb, blocks = 2, 12, 8, 8, 2, 4
    f = fpb * blocks
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(b, c, f, h, w, generator=g)
    noisy = torch.randn(b, c, fpb, h, w, generator=g)
    ref = torch.randn(b, c, 1, h, w, generator=g)
    feats = torch.randn(b, f, 5, 16, generator=g)
    t_noisy = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        tokens = model.audio_tokens(feats)
        cache = model.new_cache(capacity=f, latent_height=h, latent_width=w)
        model.prefill(cache, ref, None, b, h // 2, w // 2)
        written = []
        for i in range(blocks - 1):
            sl = slice(i * fpb, (i + 1) * fpb)
            out = model.forward_cached(clean[:, :, sl], torch.zeros(b), torch.arange(sl.start, sl.stop), cache,
                                       tokens[:, sl], write_frames=list(range(sl.start, sl.stop)))
            written.append(out)
        last = slice((blocks - 1) * fpb, f)
        cached_last = model.forward_cached(noisy, t_noisy, torch.arange(last.start, last.stop), cache, tokens[:, last])
        # The same content as one sequence: clean context blocks at t=0, then the noisy block.
        sequence = torch.cat([clean[:, :, : last.start], noisy], dim=2)
        timesteps = torch.zeros(b, f)
        timesteps[:, last] = t_noisy[:, None]
        full = model(sequence, timesteps, audio=feats, ref=ref, frames_per_block=fpb)
    assert (full[:, :, last] - cached_last).abs().max().item() <= 1e-5
    for i, out in enumerate(written):
        assert (full[:, :, i * fpb:(i + 1) * fpb] - out).abs().max().item() <= 1e-5


def test_rollout_last_block_equals_masked_forward_with_urcr_off():
    """The rollout's own cache writes reproduce the masked forward over its history (MCI off, URCR off)."""
    model = _model()
    fpb, blocks, b, h, w = 2, 3, 1, 8, 8
    opts = RolloutOptions(frames_per_block=fpb, sampler="euler", context_frames=fpb * blocks,
                          psb=PSBOptions(steps=[2]), mci=MCIOptions(enabled=False), urcr=URCROptions(enabled=False))
    rollout = Rollout(model, opts)
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(b, 12, 1, h, w, generator=g)
    feats = torch.randn(b, fpb * blocks, 5, 16, generator=g)
    noises = [torch.randn(b, 12, fpb, h, w, generator=g) for _ in range(blocks)]
    with torch.no_grad():
        tokens = model.audio_tokens(feats)
        rollout.begin(ref, None, b, (h, w))
        outs = [rollout.next_block(tokens[:, i * fpb:(i + 1) * fpb], noise=noises[i]) for i in range(blocks - 1)]
        # The last block's first denoising step, from the rollout's cache and from one masked forward.
        sigma0 = float(rollout.sigmas_for(blocks - 1)[0])
        last = slice(fpb * (blocks - 1), fpb * blocks)
        v_cached = model.forward_cached(noises[-1], torch.full((b,), 1000 * sigma0),
                                        torch.arange(last.start, last.stop), rollout.cache, tokens[:, last])
        sequence = torch.cat(outs + [noises[-1]], dim=2)
        timesteps = torch.zeros(b, fpb * blocks)
        timesteps[:, last] = 1000 * sigma0
        v_full = model(sequence, timesteps, audio=feats, ref=ref, frames_per_block=fpb)[:, :, last]
    assert (v_full - v_cached).abs().max().item() <= 1e-5


def test_urcr_bounds_positions_over_500_blocks_and_keeps_the_sink():
    model = _model(num_layers=1)
    opts = RolloutOptions(frames_per_block=1, psb=PSBOptions(steps=[1]), urcr=URCROptions(max_frames=6, keep_frames=2))
    rollout = Rollout(model, opts)
    ref = torch.randn(1, 12, 1, 4, 4)
    max_position = -1
    resets = 0
    with torch.no_grad():
        rollout.begin(ref, None, 1, (4, 4), generator=torch.Generator().manual_seed(0))
        sinks = [(layer.ref_k.clone(), layer.ref_v.clone()) for layer in rollout.cache.layers]
        for _ in range(500):
            rollout.next_block(None, shape=(1, 12, 1, 4, 4))
            record = rollout.records[-1]
            max_position = max(max_position, *record.positions, rollout.max_position_seen)
            if record.reset:
                resets += 1
                # the reference sink survives the reset unchanged (keys and values, every layer)
                for layer, (k, v) in zip(rollout.cache.layers, sinks):
                    assert torch.equal(layer.ref_k, k) and torch.equal(layer.ref_v, v)
                # The kept frames were re-encoded at positions counted from 0.
                assert sorted(p for p in rollout.cache.slot_positions if p >= 0)[:2] == [0, 1]
    assert max_position < 6
    assert resets > 100
    assert rollout.cache.num_frames <= opts.window


def test_urcr_off_positions_grow_without_bound():
    model = _model(num_layers=1)
    opts = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[1]), urcr=URCROptions(enabled=False, max_frames=6))
    rollout = Rollout(model, opts)
    with torch.no_grad():
        rollout.begin(None, None, 1, (4, 4))
        for _ in range(20):
            rollout.next_block(None, shape=(1, 12, 2, 4, 4))
    assert rollout.records[-1].positions == [38, 39]
    assert not any(r.reset for r in rollout.records)
    assert rollout.cache.num_frames == opts.window  # rolling window of the same size
