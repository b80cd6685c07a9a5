"""The compiled path as it runs on the GPU: inductor (not aot_eager) under inference_mode, with the KV
cache written in place, over 20 blocks across URCR resets. Counted with torch._dynamo's counters: the
compiled graphs stop growing once every shape of a stream has been seen, and nothing breaks the graph."""
from __future__ import annotations

import pytest
import torch

from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset

BLOCKS = 20


def _blocks(model, tokens) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    from torch._dynamo.utils import counters

    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]),
                             urcr=URCROptions(max_frames=6, keep_frames=2))
    rollout = Rollout(model, options)
    outs, counts = [], []
    with torch.inference_mode():
        g = torch.Generator().manual_seed(1)
        rollout.begin(torch.randn(1, 12, 1, 8, 8, generator=g), None, 1, (8, 8), generator=g)
        for i in range(BLOCKS):
            outs.append(rollout.next_block(tokens[:, 2 * i:2 * i + 2], shape=(1, 12, 2, 8, 8)))
            counts.append((int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))))
    assert sum(r.reset for r in rollout.records) >= 3
    return outs, counts


@pytest.mark.slow  # ~4.5 min on the shared 2-core machine: inductor compiles 5 graphs
def test_inductor_under_inference_mode_compiles_a_bounded_set_and_matches_eager():
    pytest.importorskip("torch._inductor")
    import torch._dynamo

    from bench.stream import warmup_blocks_for
    from lit_avatar.inference.fast_path import compile_blocks

    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    for block in model.blocks:
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    tokens = model.audio_tokens(torch.randn(1, 2 * BLOCKS, 5, 16, generator=torch.Generator().manual_seed(2)))
    eager, _ = _blocks(model, tokens)
    torch._dynamo.reset()
    compile_blocks(model)
    compiled, counts = _blocks(model, tokens)
    warm = warmup_blocks_for(RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]),
                                            urcr=URCROptions(max_frames=6, keep_frames=2)))
    print("compiled graphs / graph breaks after each block:", counts)
    assert counts[-1][1] == 0, f"graph breaks: {counts}"
    # layer 0 shares layer 1's graphs (one compile per shape, not two): the same few shapes
    assert counts[warm - 1] == counts[-1], f"compiles still growing after block {warm}: {counts}"
    assert 0 < counts[-1][0] <= 8, counts
    for a, b in zip(eager, compiled):
        assert (a - b).abs().max().item() <= 1e-4
