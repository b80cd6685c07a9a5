"""A prompt change mid-stream (AvatarStreamer.set_prompt): it takes effect at the next block through the one text
K/V path (AvatarDiT.set_text / KVCache.set_text), with no URCR reset and no break in motion; CUDA-graph replay
stays right when the text state changes kind (KVCache.generation); text guidance with a negative prompt."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_avatar.inference.cuda_graphs import CUDAGraphDiT
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.streamer import AvatarStreamer
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin
REF = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
OPTIONS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[3, 2]),
                         urcr=URCROptions(max_frames=6, keep_frames=2))
AUDIO = (0.1 * np.random.default_rng(1).standard_normal(int(1.6 * 16000))).astype(np.float32)  # 20 blocks of 2
CHANGE_AT = 5  # the prompt changes before block 5 (frames 10..)


def _model() -> AvatarDiT:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    for block in model.blocks:  # live audio and text paths, so both reach the frames
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
        torch.nn.init.normal_(block.cross_attn.o.weight, std=0.2)
    return model


def _prompt(seed: int) -> torch.Tensor:
    return torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(seed))


def _stream(model, text=None, change=None, at: int = CHANGE_AT, **kwargs) -> tuple[np.ndarray, AvatarStreamer]:
    """Stream AUDIO a block at a time; with `change`, set_prompt(change[0]) before block `at`."""
    streamer = AvatarStreamer(model, PatchVAE(spatial_factor=2), MelAudioEncoder(n_mels=16, normalize=False),
                              OPTIONS, REF, text=text, seed=7, **kwargs)
    frames, step = [], 2 * 640
    for start in range(0, len(AUDIO), step):
        if change is not None and streamer.blocks_done == at:
            streamer.set_prompt(change[0])
            change = None
        frames.append(streamer.push_audio(AUDIO[start:start + step]))
    frames.append(streamer.flush())
    return np.concatenate(frames), streamer


def _cache_frames(streamer: AvatarStreamer) -> tuple[list[int], list[int]]:
    cache = streamer.rollout.cache
    return list(cache.slot_frames), list(cache.slot_positions)


@pytest.mark.parametrize("before, after", [(None, 11), (11, 12), (11, None)])
def test_a_prompt_change_takes_effect_at_the_next_block_only(before, after):
    """Null -> prompt, prompt -> prompt, prompt -> null: frames before the change equal a run without it bit for
    bit, the first block after it differs, positions and URCR resets are those of the unchanged run."""
    model = _model()
    first = None if before is None else _prompt(before)
    plain, plain_streamer = _stream(model, first)
    changed, streamer = _stream(model, first, change=(None if after is None else _prompt(after),))
    split = 2 * CHANGE_AT
    assert plain.shape == changed.shape and len(plain) > split + 2
    assert np.array_equal(changed[:split], plain[:split])
    assert not np.array_equal(changed[split:split + 2], plain[split:split + 2])
    records, plain_records = list(streamer.latency), list(plain_streamer.latency)
    assert [r["positions"] for r in records] == [r["positions"] for r in plain_records]
    assert [r["reset"] for r in records] == [r["reset"] for r in plain_records] and any(r["reset"] for r in records)
    assert [r["block"] for r in records if r["prompt_changed"]] == [CHANGE_AT]
    # a stream started with the new prompt is not what the change gives: the context made before it stays
    fresh, _ = _stream(model, None if after is None else _prompt(after))
    assert not np.array_equal(changed[split:split + 2], fresh[split:split + 2])


def _sink(cache, layer: int = 1) -> torch.Tensor:
    entry = cache.layers[layer]
    return entry.k[:, entry.sink_start:entry.sink_start + cache.sink_tokens].clone()


def test_the_change_keeps_the_context_and_refills_the_text_in_place():
    """set_prompt touches neither the context frames nor the history (no reset); the block after it sees the new
    prompt's text state and a reference sink equal to a stream started on that prompt (the sink is never evicted,
    so it must not keep the old prompt), both written into the same buffers (no new cache generation)."""
    model = _model()
    _, streamer = _stream(model, _prompt(11))
    cache = streamer.rollout.cache
    slots, history = _cache_frames(streamer), [f.index for f in streamer.rollout._history]
    generation, buffers = cache.generation, [t.data_ptr() for t in cache.layers[0].text_kv]
    old_sink, sink_buffer = _sink(cache), cache.layers[1].k.data_ptr()
    _, fresh = _stream(model, _prompt(12))
    streamer.flushed = False
    streamer.set_prompt(_prompt(12))
    assert _cache_frames(streamer) == slots  # pending: nothing changes before the next block
    with torch.inference_mode():
        streamer.rollout.set_text(streamer._prompt[0])
        expected = model.blocks[0].text_kv(model.text_context(_prompt(12), 1))
    assert _cache_frames(streamer) == slots and [f.index for f in streamer.rollout._history] == history
    assert cache.generation == generation and [t.data_ptr() for t in cache.layers[0].text_kv] == buffers
    torch.testing.assert_close(cache.layers[0].text_kv[0], expected[0], rtol=0, atol=0)
    assert cache.layers[1].k.data_ptr() == sink_buffer and not torch.equal(_sink(cache), old_sink)
    torch.testing.assert_close(_sink(cache), _sink(fresh.rollout.cache), rtol=0, atol=0)


def test_prompt_embeddings_of_the_wrong_width_are_refused():
    streamer = AvatarStreamer(_model(), PatchVAE(spatial_factor=2), None, OPTIONS, REF)
    with pytest.raises(ValueError, match=r"prompt embeddings must be \[1, L, 16\], got \(1, 4, 8\)"):
        streamer.set_prompt(torch.zeros(1, 4, 8))


def _graph_like_capture(fn, pool):
    """A CPU stand-in that behaves as a CUDA graph does with the text state: replays read the text tensors that
    existed at capture (by address: values copied into them in place are seen, a replaced state is not)."""
    cache = dict(zip(fn.__code__.co_freevars, fn.__closure__))["cache_ref"].cell_contents()
    captured = [layer.text_kv for layer in cache.layers]
    out = fn()

    def replay() -> None:
        now = [layer.text_kv for layer in cache.layers]
        for layer, state in zip(cache.layers, captured):
            layer.text_kv = state
        try:
            out.copy_(fn())
        finally:
            for layer, state in zip(cache.layers, now):
                layer.text_kv = state

    return replay, out, pool


@pytest.mark.parametrize("before, after", [(None, 11), (11, 12), (11, None)])
def test_graph_replay_follows_the_text_state(before, after, monkeypatch):
    """With CUDA-graph wrapping, every frame equals the eager stream with the same change: a change of kind
    (null one-token FixedOutput <-> prompt K/V) bumps KVCache.generation, so the graphs captured on the old state
    are dropped; a prompt -> prompt change is copied into the captured buffers and replays without a capture."""
    model = _model()
    first = None if before is None else _prompt(before)
    change = (None if after is None else _prompt(after),)
    eager, _ = _stream(model, first, change=change)
    wrapped = CUDAGraphDiT(model, capture=_graph_like_capture)
    replayed, _ = _stream(wrapped, first, change=change)
    assert wrapped.replays > 0 and np.array_equal(replayed, eager)
    captures_same_kind = CUDAGraphDiT(model, capture=_graph_like_capture)
    _stream(captures_same_kind, first)
    if (before is None) == (after is None):  # same kind: the change costs no capture
        assert wrapped.captures == captures_same_kind.captures
    else:
        assert wrapped.captures > captures_same_kind.captures
        # the key alone would replay the stale state: without the generation bump the frames go wrong
        from lit_avatar.models import attention

        original = attention.KVCache.set_text

        def without_bump(self, layer, state):
            generation = self.generation
            original(self, layer, state)
            self.generation = generation

        monkeypatch.setattr(attention.KVCache, "set_text", without_bump)
        stale, _ = _stream(CUDAGraphDiT(model, capture=_graph_like_capture), first, change=change)
        assert not np.array_equal(stale, eager)


def test_text_guidance_scale_one_is_off_and_equal_prompts_change_nothing():
    """Guidance at scale 1 is the plain stream (one forward per step); with the negative equal to the prompt,
    v_neg + g (v - v_neg) = v exactly: the same frames at twice the forwards."""
    model = _model()
    plain, plain_streamer = _stream(model, _prompt(11))
    off, _ = _stream(model, _prompt(11), text_guidance=1.0, negative_text=_prompt(12))
    same, streamer = _stream(model, _prompt(11), text_guidance=3.0, negative_text=_prompt(11))
    assert np.array_equal(off, plain) and np.array_equal(same, plain)
    assert streamer.rollout.records[-1].forwards == 2 * plain_streamer.rollout.records[-1].forwards - 1


def test_text_guidance_is_the_guided_velocity_of_two_forwards():
    """One block by hand (Euler: no noise drawn between steps): the guided rollout's block equals the steps of
    v_neg + g (v_pos - v_neg), each velocity from its own cache prefilled under the prompt (the reference sink
    keeps the text it was made with) whose text state is then the velocity's text, set directly; afterwards the
    guided cache's text state is the prompt's again (the context was written under the prompt)."""
    import dataclasses

    from lit_avatar.inference.rollout import Rollout

    model, g = _model(), 2.5
    options = dataclasses.replace(OPTIONS, sampler="euler")
    ref = torch.randn(1, 12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(1, 12, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        guided = Rollout(model, options)
        guided.begin(ref, _prompt(11), 1, (8, 8))
        guided.set_text_guidance(g, _prompt(12))
        out = guided.next_block(None, noise=noise)
        runs = {}
        for name, text in (("pos", _prompt(11)), ("neg", _prompt(12))):
            runs[name] = Rollout(model, options)
            runs[name].begin(ref, _prompt(11), 1, (8, 8))
            for block, layer in zip(model.blocks, runs[name].cache.layers):
                layer.text_kv = block.text_kv(model.text_context(text, 1))
        sigmas = guided.sigmas_for(0).tolist()
        x = x0 = noise
        for j in range(len(sigmas) - 1):
            t = torch.full((1,), 1000.0 * sigmas[j])
            v_pos, v_neg = (model.forward_cached(x, t, [0, 1], runs[n].cache) for n in ("pos", "neg"))
            v = v_neg + g * (v_pos - v_neg)
            x0, x = x - sigmas[j] * v, x + (sigmas[j + 1] - sigmas[j]) * v
        expected_text = model.blocks[0].text_kv(model.text_context(_prompt(11), 1))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(guided.cache.layers[0].text_kv[0], expected_text[0], rtol=0, atol=0)
    assert guided.records[-1].forwards == 2 * (len(sigmas) - 1) + 1


def test_the_prompt_change_bench_writes_its_rows(tmp_path, capsys):
    """bench/prompt_change.py on the micro model: the latency rows with and without a change, the change's cost
    on a miss, a memory hit and a disk hit, each change at the block it was asked for (no wall-clock claims)."""
    import json

    from bench.cli import main

    out = tmp_path / "prompt.json"
    assert main(["prompt", "--preset", "micro", "--size", "16", "--blocks", "13", "--every", "3", "--distinct", "2",
                 "--psb-steps", "2,1", "--text-length", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["blocks"] == 13 and result["blocks_with_change"] == 4 and result["steady_blocks_with_change"] >= 1
    assert [c["block"] for c in result["changes"]] == [3, 6, 9, 12]
    # prompts cycle through 2 texts: text 1 (new), text 0 (the start prompt: in memory), text 1, text 0
    assert [c["embed"] for c in result["changes"]] == ["miss", "memory hit", "memory hit", "memory hit"]
    for clock in ("seconds", "cpu_seconds"):
        row = result["latency"][clock]
        assert row["block_no_change"] > 0 and row["block_with_change"] > 0 and row["ratio"] > 0
    cost = result["change_cost"]
    assert cost["refill_kv_s"] > 0
    for kind in ("miss", "memory_hit", "disk_hit"):
        assert cost[kind]["change_s"] == pytest.approx(cost[kind]["embed_s"] + cost["refill_kv_s"])
        assert cost[kind]["change_over_block"] > 0
