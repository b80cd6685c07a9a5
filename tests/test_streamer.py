"""AvatarStreamer: chunking does not change the video, durations match the audio, memory stays bounded."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_avatar.inference.audio_stream import BlockAudioFeatures
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.streamer import AvatarStreamer, block_span
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by per-op overhead; extra intra-op threads only spin (10x slower when
    the machine is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parts(tf: int = 1, layers: int = 2):
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro", temporal_factor=tf, in_channels=12 * tf, out_channels=12 * tf,
                                        num_layers=layers)).eval()
    for block in model.blocks:  # non-zero audio path, so audio features reach the frames
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    return model, PatchVAE(spatial_factor=2, temporal_factor=tf), MelAudioEncoder(n_mels=16, normalize=False)


def _audio(seconds: float, seed: int = 1) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


REF = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
OPTIONS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[3, 2]),
                         urcr=URCROptions(max_frames=6, keep_frames=2))


def _stream(parts, audio: np.ndarray, chunk: int,
            options: RolloutOptions = OPTIONS) -> tuple[np.ndarray, AvatarStreamer]:
    streamer = AvatarStreamer(*parts, options, REF, seed=7)
    frames = [streamer.push_audio(audio[i:i + chunk]) for i in range(0, len(audio), chunk)]
    frames.append(streamer.flush())
    return np.concatenate(frames), streamer


def test_block_span_follows_the_causal_grid():
    assert [block_span(i, 3, 4) for i in range(3)] == [(0, 9), (9, 12), (21, 12)]
    assert [block_span(i, 2, 1) for i in range(3)] == [(0, 2), (2, 2), (4, 2)]


@pytest.mark.parametrize("context", [3, 50])
def test_streaming_features_equal_offline_features(context):
    """Every block computed from its bounded window equals the encoder run over the whole file."""
    encoder = MelAudioEncoder(n_mels=16, normalize=False)
    audio = _audio(3.0)
    offline = encoder(torch.from_numpy(audio)[None])
    stream = BlockAudioFeatures(encoder, context_frames=context)
    got, block = [], 0
    for i in range(0, len(audio), 1000):
        stream.push(audio[i:i + 1000])
        start, count = block_span(block, 3, 4)
        while stream.ready(start + count):
            got.append(stream.features(start, start + count))
            stream.drop_before(start + count)
            block += 1
            start, count = block_span(block, 3, 4)
    feats = torch.cat(got, dim=1)
    assert feats.shape[1] >= offline.shape[1] - 12  # all but the last (look-ahead) block
    assert torch.allclose(feats, offline[:, :feats.shape[1]], atol=1e-5)
    assert stream.buffered_samples <= (context + 12 + 3) * 640 + 1000


def test_chunk_size_does_not_change_the_video():
    parts = _parts()
    audio = _audio(1.3)
    videos = [_stream(parts, audio, chunk)[0] for chunk in (1, 777, 16000)]
    assert videos[0].dtype == np.uint8 and videos[0].shape[1:] == (16, 16, 3)
    assert np.array_equal(videos[0], videos[1]) and np.array_equal(videos[0], videos[2])


def test_audio_changes_the_video():
    parts = _parts()
    a, _ = _stream(parts, _audio(1.0, seed=1), 4000)
    b, _ = _stream(parts, _audio(1.0, seed=2), 4000)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("tf", [1, 4])
def test_frame_count_matches_audio_duration(tf):
    parts = _parts(tf, layers=1)
    for seconds in (0.5, 1.37):
        audio = _audio(seconds)
        video, streamer = _stream(parts, audio, 3000)
        assert len(video) == math.ceil(len(audio) / 640)
        block_frames = block_span(1, OPTIONS.frames_per_block, tf)[1]
        assert abs(len(video) - len(audio) / 640) < block_frames
        counts = [r["frames"] for r in streamer.latency]
        assert counts[0] == 1 + tf * (OPTIONS.frames_per_block - 1) and set(counts[1:]) <= {tf * 2}


def test_latency_records_and_resets():
    video, streamer = _stream(_parts(), _audio(1.5), 2000)
    records = list(streamer.latency)
    assert [r["block"] for r in records] == list(range(len(records)))
    assert all(r["seconds"] > 0 for r in records)
    assert any(r["reset"] for r in records)  # max_frames=6 with blocks of 2: resets every other block
    assert sum(r["frames"] for r in records) >= len(video)
    assert streamer.first_frame_seconds is not None


def test_memory_stops_growing():
    parts = _parts(layers=1)
    options = RolloutOptions(frames_per_block=1, psb=PSBOptions(steps=[1]),
                             urcr=URCROptions(max_frames=5, keep_frames=2))
    streamer = AvatarStreamer(*parts, options, REF, seed=0, context_seconds=0.5, max_latency_records=16)
    audio = _audio(8.0)
    states = []
    for i in range(0, len(audio), 640):
        streamer.push_audio(audio[i:i + 640])
        states.append(streamer.memory_state())
    assert streamer.blocks_done > 190
    early, late = states[40:100], states[100:]
    for key in ("audio_samples", "cache_bytes", "cache_frames", "history_frames", "records", "latency_records"):
        assert max(s[key] for s in late) <= max(s[key] for s in early), key
    assert max(s["audio_samples"] for s in late) <= (12 + 1 + 3 + 1) * 640


def test_bench_stream_reports_the_must_show_figures(tmp_path, capsys):
    import json

    from bench.cli import main

    out = tmp_path / "bench.json"
    assert main(["stream", "--preset", "micro", "--height", "16", "--width", "16", "--latent-frames", "30",
                 "--psb-steps", "2,1", "--horizon", "6", "--compare-blocks", "2", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    stream = result["stream"]
    assert stream["blocks"] == 10 and stream["video_frames"] == 30
    # URCR at horizon 6 with 3-frame blocks: blocks 0 and 1 fill positions 0..5, every later block resets
    assert stream["latency_s"]["reset_blocks"] == 10 - 2
    state = stream["bounded_state_end"]
    assert state["cache_frames"] == 3 and state["history_frames"] == 3 and state["latency_records"] == 10
    assert 0 < stream["time_to_first_frame_s"] <= stream["wall_s"]
    assert stream["rss_bytes"]["end_over_after_first_reset"] < 1.2  # memory stays flat across resets
    compare = result["kv_vs_recompute"]
    assert compare["context_frames"] == 3 and compare["horizon_latent_frames"] == 6
    assert compare["cached_forwards_per_block"] == compare["steps_per_block"] + 1 == 2


def test_bench_stream_figures_on_a_fake_clock_and_a_growing_process(tmp_path, monkeypatch, capsys):
    """The bench's figures from known times and memory. The stream's clock reads advance 0.5 s each, so its
    start and end are 0.5 s apart and its 30 frames make 60 frames/s. In the KV-vs-recompute rounds the
    reads go (begin, end) cached, (begin, end) recompute: each end comes 0.25 s resp. 1 s after its begin,
    so the speedup is 4. A process that grows 1 MiB per sample reports its growth."""
    import json
    import sys
    from types import SimpleNamespace

    import bench.stream
    from bench.cli import main

    clock = SimpleNamespace(now=0.0, reads={})

    def perf_counter():
        caller = sys._getframe(1).f_code.co_name
        k = clock.reads[caller] = clock.reads.get(caller, -1) + 1
        clock.now += {"_push_until": 0.5}.get(caller) or (0.25, 0.25, 0.0, 1.0)[k % 4]
        return clock.now

    rss = SimpleNamespace(now=100 * 2**20)

    def growing_rss():
        rss.now += 2**20
        return rss.now

    monkeypatch.setattr(bench.stream, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(bench.stream, "rss_bytes", growing_rss)
    out = tmp_path / "bench.json"
    assert main(["stream", "--preset", "micro", "--height", "16", "--width", "16", "--latent-frames", "30",
                 "--psb-steps", "2,1", "--horizon", "6", "--compare-blocks", "2", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    stream, compare = result["stream"], result["kv_vs_recompute"]
    assert stream["wall_s"] == 0.5 and stream["video_frames"] == 30 and stream["frames_per_second"] == 60.0
    assert compare["kv_cached_block_s"] == 0.25 and compare["recompute_block_s"] == 1.0 and compare["speedup"] == 4.0
    memory = stream["rss_bytes"]
    assert memory["peak_sampled"] == memory["end"] > memory["after_first_reset"] > 100 * 2**20
    assert memory["end_over_after_first_reset"] > 1.0  # the growth is reported
