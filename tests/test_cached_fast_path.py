"""The inference fast path: the KV cache read in place, no mask, no tensor value read in the block loop,
bf16 against fp32, and the block that torch.compile captures."""
from __future__ import annotations

import copy

import pytest
import torch

from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def _model(preset: str = "micro", **overrides) -> AvatarDiT:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset(preset, **overrides)).eval()
    for block in model.blocks:  # a live audio path, so it is part of every comparison
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    return model


OPTIONS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[3, 2]),
                         urcr=URCROptions(max_frames=6, keep_frames=2))


def _cached_blocks(model: AvatarDiT, grad: bool, blocks: int = 4) -> list[torch.Tensor]:
    """Velocities of a sequence of cached forwards (writes, reads, a ring that wraps) with or without grad."""
    g = torch.Generator().manual_seed(3)
    c, h, w, fpb = model.config.in_channels, 8, 8, 2
    ref = torch.randn(2, c, 1, h, w, generator=g)
    feats = torch.randn(2, fpb * blocks, 5, model.config.audio_feature_dim, generator=g)
    cache = model.new_cache(capacity=4, latent_height=h, latent_width=w, block_frames=fpb)
    outs = []
    with torch.no_grad():
        model.prefill(cache, ref, None, 2, h // 2, w // 2)
        tokens = model.audio_tokens(feats)
    for i in range(blocks):
        x = torch.randn(2, c, fpb, h, w, generator=g)
        frames = list(range(i * fpb, (i + 1) * fpb))
        with torch.set_grad_enabled(grad):
            outs.append(model.forward_cached(x, torch.tensor([700.0, 300.0]), frames, cache, tokens[:, frames]))
        with torch.no_grad():
            model.forward_cached(x, torch.zeros(2), frames, cache, tokens[:, frames], write_frames=frames)
    return [o.detach() for o in outs]


def test_in_place_cache_read_equals_concatenation():
    """The fused path (own keys written into the cache's scratch, one contiguous read) gives the result of
    the concatenating path (used with gradient) within 1e-5 in fp32; the masked full forward agrees with
    both (tests/test_causal_equivalence.py)."""
    model = _model()
    fused, concatenated = _cached_blocks(model, grad=False), _cached_blocks(model, grad=True)
    for a, b in zip(fused, concatenated):
        assert (a - b).abs().max().item() <= 1e-5


def test_cache_context_is_a_view_of_one_buffer():
    model = _model()
    cache = model.new_cache(capacity=2, latent_height=8, latent_width=8, block_frames=2)
    with torch.no_grad():
        model.prefill(cache, torch.randn(1, 12, 1, 8, 8), None, 1, 4, 4)
        model.forward_cached(torch.randn(1, 12, 2, 8, 8), torch.zeros(1), [0, 1], cache, None, write_frames=[0, 1])
    for i, layer in enumerate(cache.layers):
        keys, values = cache.context(i, cache.context_end())
        assert keys._base is layer.k and values._base is layer.v  # no copy
        assert keys.shape[1] == cache.sink_tokens + 2 * cache.tokens_per_frame
        torch.testing.assert_close(keys[:, :cache.sink_tokens], layer.ref_k)


def test_cached_path_calls_attention_without_masks(monkeypatch):
    """No boolean mask anywhere in streaming: every SDPA call may take the flash/efficient kernels."""
    import lit_avatar.models.attention as attention

    masks = []
    original = attention.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = _model()
    rollout = Rollout(model, OPTIONS)
    with torch.inference_mode():
        rollout.begin(torch.randn(1, 12, 1, 8, 8), None, 1, (8, 8))
        for _ in range(4):
            rollout.next_block(None, shape=(1, 12, 2, 8, 8))
    assert len(masks) > 20 and all(m is None for m in masks)  # self-attention only: the null text needs none


def test_block_loop_reads_no_tensor_value(monkeypatch):
    """After the first block (tables built, step lists made), generating blocks, a URCR reset included,
    never reads a tensor's value on the host: on a GPU nothing in the loop waits for the device."""
    model = _model()
    rollout = Rollout(model, OPTIONS)
    tokens = model.audio_tokens(torch.randn(1, 2, 5, 16))
    with torch.inference_mode():
        rollout.begin(torch.randn(1, 12, 1, 8, 8), None, 1, (8, 8), generator=torch.Generator().manual_seed(0))
        for _ in range(3):  # warm-up: every block index of the PSB list, and the positions of a reset
            rollout.next_block(tokens, shape=(1, 12, 2, 8, 8))

        def refuse(*args, **kwargs):
            raise AssertionError("a tensor value was read on the host inside the block loop")

        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            monkeypatch.setattr(torch.Tensor, name, refuse)
        for _ in range(4):
            rollout.next_block(tokens, shape=(1, 12, 2, 8, 8))
        monkeypatch.undo()
    assert any(r.reset for r in list(rollout.records)[3:])


def test_bf16_rollout_matches_fp32():
    """bf16 weights and activations against fp32, tiny preset, 6 blocks of the rollout from the same noise.

    Tolerance: relative L2 error <= 1e-2. bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 2e-3); every
    linear layer rounds its weights, inputs and outputs, and the errors of ~4 layers add roughly as a random
    walk, so a few times 2e-3 is expected (measured 4.1e-3 on each block, the same for late blocks: the
    rollout does not amplify it); 1e-2 is the upper end of what bf16 operands give (METHOD.md: 1e-3..1e-2).
    The error must also not be zero, or bf16 was not used.
    """
    fp32 = _model("tiny")
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(1, 12, 1, 16, 16, generator=g)
    feats = torch.randn(1, 12, 5, 40, generator=g)
    noises = [torch.randn(1, 12, 2, 16, 16, generator=g) for _ in range(6)]
    outs = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        rollout = Rollout(model, OPTIONS)
        with torch.inference_mode():
            rollout.begin(ref, None, 1, (16, 16), generator=torch.Generator().manual_seed(2))
            tokens = model.audio_tokens(feats)
            outs[name] = [rollout.next_block(tokens[:, 2 * i:2 * i + 2], noise=noises[i]) for i in range(6)]
        assert rollout.cache.layers[0].k.dtype == (torch.bfloat16 if name == "bf16" else torch.float32)
    for a, b in zip(outs["fp32"], outs["bf16"]):
        assert a.dtype == b.dtype == torch.float32  # the latent state stays fp32 between steps
        relative = ((a - b).norm() / a.norm()).item()
        assert 1e-4 < relative <= 1e-2


def test_compiled_block_captures_the_cached_forward_whole():
    """torch.compile (--compile) captures a block's cached forward as one graph: no graph breaks, the
    cache written in place through the kv_buffer inputs, the same numbers (aot_eager: tracing and
    functionalisation without inductor's code generation, which costs minutes on this CPU)."""
    model = _model(num_layers=1)
    eager = _cached_blocks(model, grad=False, blocks=2)
    block = model.blocks[0]
    block.forward = torch.compile(block.forward, backend="aot_eager", fullgraph=True, dynamic=False)
    try:
        compiled = _cached_blocks(model, grad=False, blocks=2)
    finally:
        del block.forward
        torch._dynamo.reset()
    for a, b in zip(eager, compiled):
        assert (a - b).abs().max().item() <= 1e-5


def test_graph_replay_plumbing_matches_the_plain_rollout():
    """CUDAGraphDiT's bookkeeping (static inputs, keys by shape/positions/context, graphs dropped with the
    cache) with the CPU stand-in capture, which re-runs the captured function from the static inputs: a
    varying input not copied in, or a graph replayed for the wrong positions, would change the frames."""
    from lit_avatar.inference.cuda_graphs import CUDAGraphDiT

    model = _model()
    graphed = CUDAGraphDiT(model)
    tokens = model.audio_tokens(torch.randn(1, 2 * 10, 5, 16))
    outs = {}
    for name, net in (("plain", model), ("graphed", graphed)):
        rollout = Rollout(net, OPTIONS)
        with torch.inference_mode():
            for stream in range(2):  # a second stream: new cache, graphs rebuilt
                rollout.begin(torch.randn(1, 12, 1, 8, 8, generator=torch.Generator().manual_seed(stream)), None, 1,
                              (8, 8), generator=torch.Generator().manual_seed(stream))
                outs[name, stream] = [rollout.next_block(tokens[:, 2 * i:2 * i + 2], shape=(1, 12, 2, 8, 8))
                                      for i in range(10)]
    for key in [k for k in outs if k[0] == "plain"]:
        for a, b in zip(outs[key], outs["graphed", key[1]]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # per stream 21 denoising forwards (3 + 9 x 2 steps); URCR cycles the positions, so 3 graphs serve them
    assert graphed.replays == 2 * 21 and graphed.captures == 2 * 3


def test_rope_tables_made_in_inference_mode_serve_training():
    """Validation samples under inference_mode, then training differentiates a cached forward at the same
    positions: the cached RoPE table must be a normal tensor that autograd may save."""
    model = _model()
    rollout = Rollout(model, OPTIONS)
    with torch.inference_mode():
        rollout.begin(None, None, 1, (8, 8))
        rollout.next_block(None, shape=(1, 12, 2, 8, 8))
    rollout.begin(None, None, 1, (8, 8))
    out = model.forward_cached(torch.randn(1, 12, 2, 8, 8), torch.full((1,), 500.0), [0, 1], rollout.cache)
    out.square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad is not None
