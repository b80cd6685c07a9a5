"""The work a steady block no longer repeats (issue 23), each checked against the computation it replaces
in fp32: the null text's cross-attention output kept per stream, the audio K/V computed once per block,
the cache-write forward without the last layer's tail and the head."""
from __future__ import annotations

import copy

import pytest
import torch

from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.attention import FixedOutput
from lit_avatar.models.dit import AvatarDiT, BlockAudio
from lit_avatar.models.presets import get_preset

C, H, W, FPB = 12, 8, 8, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def _model() -> AvatarDiT:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    for block in model.blocks:  # a live audio path and a non-zero null text: both enter every comparison
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    torch.nn.init.normal_(model.null_text, std=1.0)
    return model


def _stream(model: AvatarDiT, text: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(1)
    cache = model.new_cache(capacity=4, latent_height=H, latent_width=W, block_frames=FPB)
    with torch.no_grad():
        model.prefill(cache, torch.randn(1, C, 1, H, W, generator=g), text, 1, H // 2, W // 2)
        tokens = model.audio_tokens(torch.randn(1, FPB, 5, model.config.audio_feature_dim, generator=g))
        model.forward_cached(torch.randn(1, C, FPB, H, W, generator=g), torch.zeros(1), [0, 1], cache, tokens,
                             write_frames=[0, 1])
    return cache, tokens, torch.randn(1, C, FPB, H, W, generator=g)


def _as_key_values(model: AvatarDiT, cache) -> None:
    """Today's computation: the null text's K/V, attended by every query of every forward."""
    ctx = model.text_context(None, 1)
    for block, layer in zip(model.blocks, cache.layers):
        layer.text_kv = block.cross_attn.context_kv(ctx)


def test_null_text_output_kept_per_stream_equals_cross_attention():
    model = _model()
    cache, tokens, x = _stream(model)
    assert all(isinstance(layer.text_kv, FixedOutput) for layer in cache.layers)
    with torch.no_grad():
        kept = model.forward_cached(x, torch.full((1,), 600.0), [2, 3], cache, tokens)
        _as_key_values(model, cache)
        attended = model.forward_cached(x, torch.full((1,), 600.0), [2, 3], cache, tokens)
    assert (kept - attended).abs().max().item() <= 1e-5


def test_a_prompt_change_refills_the_text_in_place():
    """set_text is the hook a prompt change calls: a text of the same shape goes into the same buffers (no
    new cache generation, so captured graphs stay valid) and the result equals a cache given the new text's
    state directly (the reference sink and the written context keep the text they were made with)."""
    model = _model()
    prompt = torch.randn(1, 3, model.config.text_dim, generator=torch.Generator().manual_seed(5))
    other = torch.randn(1, 3, model.config.text_dim, generator=torch.Generator().manual_seed(6))
    cache, tokens, x = _stream(model, prompt)
    fresh, _, _ = _stream(model, prompt)
    with torch.no_grad():
        ctx = model.text_context(other, 1)
        for block, layer in zip(model.blocks, fresh.layers):
            layer.text_kv = block.text_kv(ctx)
    generation = cache.generation
    buffers = [t.data_ptr() for t in cache.layers[0].text_kv]
    with torch.no_grad():
        model.set_text(cache, other, 1)
        changed = model.forward_cached(x, torch.full((1,), 600.0), [2, 3], cache, tokens)
        expected = model.forward_cached(x, torch.full((1,), 600.0), [2, 3], fresh, tokens)
        assert cache.generation == generation and [t.data_ptr() for t in cache.layers[0].text_kv] == buffers
        model.set_text(cache, None, 1)  # back to the null text: another kind of state, new buffers
    torch.testing.assert_close(changed, expected, rtol=0, atol=1e-6)
    assert cache.generation > generation and isinstance(cache.layers[0].text_kv, FixedOutput)


def test_audio_key_values_once_per_block_equal_per_forward():
    model = _model()
    cache, tokens, x = _stream(model)
    with torch.no_grad():
        per_forward = model.forward_cached(x, torch.full((1,), 600.0), [2, 3], cache, tokens)
        once = model.forward_cached(x, torch.full((1,), 600.0), [2, 3], cache, model.block_audio(tokens))
    assert isinstance(model.block_audio(tokens), BlockAudio)
    assert (per_forward - once).abs().max().item() <= 1e-5


def test_write_only_forward_stores_the_same_keys_values():
    model = _model()
    cache, tokens, x = _stream(model)
    other = copy.deepcopy(cache)
    with torch.no_grad():
        full = model.forward_cached(x, torch.full((1,), 50.0), [2, 3], cache, tokens, write_frames=[2, 3])
        short = model.forward_cached(x, torch.full((1,), 50.0), [2, 3], other, tokens, write_frames=[2, 3],
                                     write_only=True)
    assert full is not None and short is None
    for a, b in zip(cache.layers, other.layers):  # sink and ring (the scratch in front is a forward's own)
        s = a.sink_start
        assert (a.k[:, s:] - b.k[:, s:]).abs().max().item() <= 1e-5
        assert (a.v[:, s:] - b.v[:, s:]).abs().max().item() <= 1e-5


def test_rollout_with_every_removal_equals_the_full_computation():
    """Ten blocks across two URCR resets: the rollout (which now uses all three) against the same rollout
    with the text as K/V, audio tokens per forward and full write forwards."""
    model = _model()
    options = RolloutOptions(frames_per_block=FPB, psb=PSBOptions(steps=[3, 2]),
                             urcr=URCROptions(max_frames=6, keep_frames=2))
    tokens = model.audio_tokens(torch.randn(1, FPB * 10, 5, model.config.audio_feature_dim,
                                            generator=torch.Generator().manual_seed(2)))

    class Full(torch.nn.Module):  # the model as it computed before: no shortcut taken
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(super().__getattr__("inner"), name)

        def block_audio(self, audio_tokens):
            return audio_tokens

        def prefill(self, cache, *args):
            self.inner.prefill(cache, *args)
            _as_key_values(self.inner, cache)

        def forward_cached(self, *args, write_only=False, **kwargs):
            return self.inner.forward_cached(*args, **kwargs)

    outs = []
    for net in (model, Full(model)):
        rollout = Rollout(net, options)
        with torch.inference_mode():
            rollout.begin(torch.randn(1, C, 1, H, W, generator=torch.Generator().manual_seed(3)), None, 1, (H, W),
                          generator=torch.Generator().manual_seed(4))
            outs.append(torch.cat([rollout.next_block(tokens[:, FPB * i:FPB * (i + 1)], shape=(1, C, FPB, H, W))
                                   for i in range(10)], dim=2))
        assert sum(r.reset for r in rollout.records) >= 2
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5
