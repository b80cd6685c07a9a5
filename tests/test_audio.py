"""Audio encoders and projector: shapes, parity with transformers, frame alignment, streaming grouping."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_avatar.errors import UserError
from lit_avatar.models.audio import (
    AudioEncoder,
    AudioProjector,
    MelAudioEncoder,
    Wav2Vec2AudioEncoder,
    frame_window,
)


def _tiny_wav2vec2_config():
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory):
    from transformers import Wav2Vec2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w2v") / "wav2vec2"
    Wav2Vec2Model(_tiny_wav2vec2_config()).save_pretrained(str(path))
    return str(path)


def test_frame_window_replicates_edges():
    feats = torch.arange(4.0).reshape(1, 4, 1)
    win = frame_window(feats)
    assert win.shape == (1, 4, 5, 1)
    assert win[0, :, :, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]


@pytest.mark.parametrize("layers", ["all", "last"])
def test_wav2vec2_matches_manual_computation(wav2vec2_dir, layers):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    encoder = Wav2Vec2AudioEncoder.from_pretrained(wav2vec2_dir, layers=layers)
    assert isinstance(encoder, AudioEncoder)
    assert encoder.feature_dim == (64 if layers == "all" else 32) and encoder.window == 5
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()  # frozen encoder must stay deterministic
    assert not encoder.model.training

    torch.manual_seed(1)
    audio = 0.3 * torch.randn(2, 9 * 640)
    feats = encoder(audio)
    assert feats.shape == (2, 9, 5, encoder.feature_dim)

    # reference: the library's own feature extractor and model, then interpolation and the window by hand
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    values = extractor(list(audio.numpy()), sampling_rate=16000, return_tensors="pt").input_values
    model = Wav2Vec2Model.from_pretrained(wav2vec2_dir).eval()
    with torch.no_grad():
        hidden = model(values, output_hidden_states=True).hidden_states
    hidden = torch.cat(hidden[1:], -1) if layers == "all" else hidden[-1]
    hidden = F.interpolate(hidden.transpose(1, 2), size=9, mode="linear", align_corners=True).transpose(1, 2)
    for t in range(9):
        for k in range(5):
            src = min(max(t + k - 2, 0), 8)
            torch.testing.assert_close(feats[:, t, k], hidden[:, src], atol=1e-4, rtol=1e-4)


def test_wav2vec2_num_frames_and_from_config():
    encoder = Wav2Vec2AudioEncoder.from_config(_tiny_wav2vec2_config(), layers="last")
    feats = encoder(torch.randn(1, 5 * 640 + 100), num_frames=7)
    assert feats.shape == (1, 7, 5, 32)


def test_wav2vec2_missing_folder_is_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="nope"):
        Wav2Vec2AudioEncoder.from_pretrained(str(missing))
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        Wav2Vec2AudioEncoder(str(tmp_path / "empty"))


def _am_tone(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 300 Hz tone whose amplitude follows a slow envelope; returns audio and the per-frame envelope."""
    t = torch.arange(frames * 640) / 16000.0
    envelope = 0.02 + 0.98 * (0.5 + 0.5 * torch.sin(2 * math.pi * 1.5 * t))
    audio = 0.8 * envelope * torch.sin(2 * math.pi * 300.0 * t)
    per_frame = envelope.reshape(frames, 640).mean(-1)
    return audio[None], per_frame


def test_mel_energy_follows_envelope():
    encoder = MelAudioEncoder()
    assert isinstance(encoder, AudioEncoder) and encoder.feature_dim == 40
    assert len(encoder.state_dict()) == 0  # no weights
    audio, envelope = _am_tone(50)
    feats = encoder(audio)
    assert feats.shape == (1, 50, 5, 40)
    energy = feats[0, :, 2].amax(-1)  # the tone's mel bin; far bins sit at the log floor
    corr = torch.corrcoef(torch.stack([energy, torch.log(envelope)]))[0, 1]
    assert corr > 0.95, corr
    # the window's centre is the frame itself: shifting the audio by 3 frames shifts the features by 3
    shifted = encoder(torch.cat([torch.zeros(1, 3 * 640), audio[:, : 47 * 640]], 1))
    corr_shift = torch.corrcoef(torch.stack([shifted[0, 3:, 2].amax(-1), energy[:47]]))[0, 1]
    assert corr_shift > 0.95


def test_mel_num_frames_pads_and_cuts():
    encoder = MelAudioEncoder(n_mels=16, normalize=False)
    audio = torch.randn(2, 4 * 640)
    assert encoder(audio, num_frames=6).shape == (2, 6, 5, 16)
    assert encoder(audio, num_frames=2).shape == (2, 2, 5, 16)
    # frames beyond the audio are silent: lowest energy
    padded = encoder(audio, num_frames=6)
    assert padded[:, 5, 2].mean() < padded[:, 1, 2].mean()
    with pytest.raises(ValueError, match="no video frame"):
        encoder(torch.randn(1, 100))


def _index_feats(frames: int, window: int = 5, dim: int = 3) -> torch.Tensor:
    """Features whose value is their frame index, so grouping can be read back."""
    return torch.arange(frames, dtype=torch.float32)[None, :, None, None].expand(2, frames, window, dim).clone()


def test_projector_grouping():
    proj = AudioProjector(feature_dim=3, window=5, temporal_factor=4, audio_tokens=2, dim=8)
    grouped = proj.group(_index_feats(9))  # t = 3
    assert grouped.shape == (2, 3, 4 * 5 * 3)
    frames_of = grouped.reshape(2, 3, 4, 15)[0, :, :, 0]
    assert frames_of.tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
    chunk = proj.group(_index_feats(8), starts_at_zero=False).reshape(2, 2, 4, 15)[0, :, :, 0]
    assert chunk.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert proj(_index_feats(9)).shape == (2, 3, 2, 8)


def test_projector_rejects_misfit_lengths():
    proj = AudioProjector(feature_dim=3, window=5, temporal_factor=4, audio_tokens=2, dim=8)
    with pytest.raises(ValueError, match=r"T = 1 \+ 4\*\(t-1\)"):
        proj(_index_feats(8))
    with pytest.raises(ValueError, match="multiple of 4"):
        proj(_index_feats(9), starts_at_zero=False)
    with pytest.raises(ValueError, match="window=5, dim=3"):
        proj(torch.zeros(1, 5, 5, 4))


def test_projector_streaming_equals_whole_clip():
    torch.manual_seed(0)
    proj = AudioProjector(feature_dim=6, window=5, temporal_factor=4, audio_tokens=3, dim=16, hidden_dim=24)
    feats = torch.randn(2, 1 + 4 * 5, 5, 6)
    whole = proj(feats)
    parts = [proj(feats[:, :1])] + [proj(feats[:, s : s + 8], starts_at_zero=False) for s in (1, 9)]
    parts.append(proj(feats[:, 17:21], starts_at_zero=False))
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)
