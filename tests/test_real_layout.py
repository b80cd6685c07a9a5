"""The real layout: training attention equals the rollout's cached attention with a window shorter than the
clip, seams counted on Wan's causal grid, CUDA graphs that never outlive their cache, and every stage run end
to end at micro width."""
from __future__ import annotations

import gc
import weakref

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


def _video_with_jumps(frames: int, jumps: list[int], seed: int = 0):
    """uint8 [1, T, 16, 16, 3]: small changes between frames, a large one into every frame in `jumps`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    level = np.cumsum(rng.normal(0.0, 1.0, frames))  # inside a block: a gentle random walk
    for t in jumps:
        level[t:] += 30.0 * (1 if (t // 3) % 2 else -1)  # a seam: a jump that stays
    base = rng.uniform(60, 190, (16, 16, 3))
    video = np.clip(base[None] + level[:, None, None, None], 0, 255).astype(np.uint8)
    return video[None]


def test_seams_are_scored_where_the_wan_grid_puts_them():
    """Wan, tf 4, fpb 3: blocks of 9 then 12 video frames. Jumps planted at the grid's seams give a large
    seam/inside ratio; jumps at t % 12 == 0 (where a tf*fpb count would put seams) do not, through the one
    seam score that validation (SelfForcingModule) and the ablations (eval.stream_scores.score_streams) use."""
    from eval.stream_scores import seam_flicker
    from lit_avatar.causal_grid import CausalGrid

    grid = CausalGrid(frames_per_block=3, temporal_factor=4)
    frames = 125  # 5 s at 25 fps
    seams = grid.seams(frames)
    assert seams[:4] == [9, 21, 33, 45] and grid.block_span(0) == (0, 9) and grid.block_span(2) == (21, 12)
    at_seams = seam_flicker(_video_with_jumps(frames, seams), grid)["flicker_ratio"]
    at_twelves = seam_flicker(_video_with_jumps(frames, list(range(12, frames, 12))), grid)["flicker_ratio"]
    assert at_seams > 5 and at_twelves < 2, (at_seams, at_twelves)


def test_grid_counts_frames_blocks_and_urcr_resets_as_the_rollout_and_the_vae_do():
    from lit_avatar.causal_grid import CausalGrid

    grid = CausalGrid(frames_per_block=3, temporal_factor=4)
    assert [grid.video_frames(t) for t in (1, 3, 21)] == [1, 9, 81]
    assert grid.latent_frames(81) == 21 and grid.latent_frames(82) == 22
    assert grid.frames_for_samples(16000 * 10) == 250 and grid.frames_for_samples(641) == 2
    assert grid.blocks_for(250) == 22  # 1 + ceil(249 / 4) = 64 latent frames: 21 whole blocks and a partial one
    assert [grid.block_of(t) for t in (0, 8, 9, 20, 21)] == [0, 0, 1, 1, 2]
    # URCR: the grid's reset blocks and positions are the rollout's
    model = _micro_model()
    options = RolloutOptions(frames_per_block=3, context_frames=2, psb=PSBOptions(steps=[1]),
                             urcr=URCROptions(max_frames=10, keep_frames=2))
    rollout = Rollout(model, options, max_records=None)
    with torch.no_grad():
        rollout.begin(None, None, 1, (4, 4), generator=torch.Generator().manual_seed(0))
        for _ in range(12):
            rollout.next_block(None, shape=(1, 12, 3, 4, 4))
    assert [r.index for r in rollout.records if r.reset] == grid.reset_blocks(12, 10, 2) == [3, 5, 7, 9, 11]
    assert [r.positions for r in rollout.records][2:5] == [[6, 7, 8], [2, 3, 4], [5, 6, 7]]


@pytest.mark.slow
def test_micro_wan_pipeline_runs_every_stage_in_the_real_layout(tmp_path):
    """data -> teacher -> ODE init -> DMD (the wan1.3b recipes at micro width) -> 10 s `generate` -> `eval` with
    drift and seams: frame counts exact against the audio, block spans and URCR resets where the causal grid
    says, both causal checkpoints load into `generate`, finite metrics (lit_avatar.micro_wan.check_run)."""
    import json

    from lit_avatar.micro_wan import main

    out = tmp_path / "micro_wan"
    assert main(["--out", str(out), "--threads", "1"]) == 0, (out / "summary.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == []
    sidecar = json.loads((out / "gen" / "clip.json").read_text())
    assert sidecar["frames"] == 250 and sidecar["grid"] == {"frames_per_block": 3, "temporal_factor": 4, "fps": 25.0}
    assert sidecar["latency"]["reset_block_indices"] == [7, 13, 19]  # URCR 21/3 on 3-frame blocks: 6 per cycle
    assert sidecar["rollout"]["psb"]["steps"] == [8, 6, 4] and sidecar["rollout"]["mci"]["enabled"]
    assert (out / "ode_init_2s.mp4").is_file()  # the ODE-init checkpoint streams too
    results = json.loads((out / "eval.json").read_text())
    assert {"seams", "synthsync", "appearance", "drift"} <= set(results["computed"])


def test_second_stream_after_free_recaptures():
    """A second stream on the same CUDAGraphDiT after the first stream's cache is freed: the wrapper held
    the first cache only weakly (so it really is freed), captures every graph again for the new cache, and
    the new stream's frames equal the plain model's. Keyed by id(), a new cache at the freed one's address
    would replay graphs that read freed buffers."""
    from lit_avatar.inference.cuda_graphs import CUDAGraphDiT
    from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
    from lit_avatar.inference.rollout import Rollout
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]),
                             urcr=URCROptions(max_frames=6, keep_frames=2))
    graphed = CUDAGraphDiT(model)

    def stream(net, seed: int) -> tuple[Rollout, list[torch.Tensor]]:
        rollout = Rollout(net, options)
        g = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            rollout.begin(torch.randn(1, 12, 1, 8, 8, generator=g), None, 1, (8, 8), generator=g)
            return rollout, [rollout.next_block(None, shape=(1, 12, 2, 8, 8)) for _ in range(4)]

    first, _ = stream(graphed, 1)
    captures = graphed.captures
    freed = weakref.ref(first.cache)
    del first
    gc.collect()
    assert freed() is None, "the graph wrapper keeps the first stream's cache alive"
    _, frames = stream(graphed, 2)
    _, expected = stream(model, 2)
    assert captures > 0 and graphed.captures == 2 * captures
    for a, b in zip(frames, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
