"""CUDA graphs are captured before the timer: a stream started in a finished stream's cache replays the
graphs captured there (CPU stand-in capture; tests/test_real_layout.py has the freed-cache case)."""
from __future__ import annotations

import json

import torch

from lit_avatar.inference.cuda_graphs import CUDAGraphDiT
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset

OPTIONS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]),
                         urcr=URCROptions(max_frames=6, keep_frames=2))


def _stream(net, seed: int, blocks: int, cache=None) -> tuple[Rollout, torch.Tensor]:
    rollout = Rollout(net, OPTIONS)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        rollout.begin(torch.randn(1, 12, 1, 8, 8, generator=g), None, 1, (8, 8), generator=g, cache=cache)
        frames = torch.cat([rollout.next_block(None, shape=(1, 12, 2, 8, 8)) for _ in range(blocks)], dim=2)
    return rollout, frames


def test_a_stream_in_a_finished_streams_cache_captures_nothing_and_equals_a_fresh_one():
    from bench.stream import warmup_blocks_for

    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    graphed = CUDAGraphDiT(model)
    warm = warmup_blocks_for(OPTIONS)
    warmup, _ = _stream(graphed, 1, warm)
    captures = graphed.captures
    _, frames = _stream(graphed, 2, 3 * warm, cache=warmup.cache)  # several URCR cycles
    _, expected = _stream(model, 2, 3 * warm)
    assert captures > 0 and graphed.captures == captures and graphed.replays > 0
    torch.testing.assert_close(frames, expected, rtol=0, atol=0)


def test_bench_stream_measured_stream_performs_no_capture(tmp_path):
    """bench stream --cuda-graphs: every capture happens in the warm-up, none in the measured stream (before
    the fix the measured stream built a new cache and captured all its graphs again inside the timer)."""
    from bench.stream import main

    out = tmp_path / "stream.json"
    main(["--preset", "micro", "--height", "32", "--width", "32", "--latent-frames", "36", "--frames-per-block", "2",
          "--psb-steps", "2,1", "--horizon", "6", "--compare-blocks", "0", "--vae", "patch", "--warmup-blocks", "5",
          "--cuda-graphs", "--quiet", "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["warmup"]["graph_captures"] > 0
    assert result["stream"]["graph_captures"] == 0 and result["stream"]["graph_replays"] > 0
    assert result["stream"]["latency_s"]["reset_blocks"] >= 3
