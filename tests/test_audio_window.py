"""Streamed wav2vec2 features against whole-clip features: the error by distance from the window's edge
(tiny random wav2vec2 with the base model's 128-tap positional convolution), and the feature source that
serves whole-clip features to the streamer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_avatar.inference.audio_stream import PrecomputedAudioFeatures, edge_error_curve


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("transformers")
    from bench.audio_window import tiny_wav2vec2_config
    from lit_avatar.models.audio import Wav2Vec2AudioEncoder

    torch.manual_seed(0)
    return Wav2Vec2AudioEncoder.from_config(tiny_wav2vec2_config(), layers="all")


def _speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave = tone + 0.05 * rng.standard_normal(t.size)
    return torch.from_numpy(wave.astype(np.float32))[None]


def test_window_error_falls_with_distance_from_the_edge(encoder):
    """wav2vec2 sees its window, not the file: frames at the edge differ most (the conv receptive field and
    the +-2 frame window), a plateau follows while the 128-tap positional convolution (+-1.28 s = 32 video
    frames) still reaches past the edge, then a floor set by the window-wide normalisations and attention."""
    with torch.no_grad():
        curve = {row["distance"]: row["mean_rel_error"] for row in edge_error_curve(encoder, _speechlike(6.0), 62)}
    plateau = np.mean([curve[d] for d in range(2, 16)])
    floor = np.mean([curve[d] for d in range(34, 62)])
    assert curve[0] > curve[1] > plateau  # the edge itself is worst
    assert curve[0] > 2 * plateau
    assert floor < plateau / 4  # past the positional convolution's reach the error drops several-fold
    assert 0 < floor < 0.05  # but never to zero: the window's normalisation and global attention remain


def test_precomputed_features_serve_blocks_like_the_encoder():
    feats = torch.randn(10, 5, 4)
    source = PrecomputedAudioFeatures(feats, lookahead_frames=2)
    source.push(np.zeros(640 * 6, dtype=np.float32))
    assert source.ready(4) and not source.ready(5)
    torch.testing.assert_close(source.features(1, 4)[0], feats[1:4])
    source.finish()
    tail = source.features(8, 12)[0]  # past the audio: the last frame repeated
    torch.testing.assert_close(tail[:2], feats[8:10])
    torch.testing.assert_close(tail[2:], feats[9:10].expand(2, 5, 4))


def test_streamer_lookahead_follows_the_encoder(encoder):
    """wav2vec2 streams with the 8-frame look-ahead the SynthSync experiment chose; a local encoder keeps 3."""
    from lit_avatar.inference.options import RolloutOptions
    from lit_avatar.inference.streamer import AvatarStreamer
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE

    ref = np.zeros((16, 16, 3), dtype=np.uint8)
    for enc, expected in ((encoder, 8), (MelAudioEncoder(n_mels=16, normalize=False), 3)):
        model = AvatarDiT(config=get_preset("micro", audio_feature_dim=enc.feature_dim, num_layers=1)).eval()
        streamer = AvatarStreamer(model, PatchVAE(2), enc, RolloutOptions(frames_per_block=2), ref)
        assert streamer.audio.lookahead_frames == expected
    streamer = AvatarStreamer(model, PatchVAE(2), enc, RolloutOptions(frames_per_block=2), ref, lookahead_frames=5)
    assert streamer.audio.lookahead_frames == 5
