"""Real-layout checks owned by the gpu branch (issue 19 item 3): CUDA graphs must not outlive their cache.
Self-contained: the layout branch adds its own tests to a file of this name."""
from __future__ import annotations

import gc
import weakref

import torch


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
