"""VAEs: PatchVAE is exactly lossless on the causal grid; WanVAE loads a tiny diffusers VAE from disk."""

import json

import pytest
import torch

from lit_avatar.errors import UserError
from lit_avatar.models.vae import PatchVAE, VideoVAE, WanVAE, latent_frames, video_frames


def _video(frames: int, size: int = 8, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(batch, 3, frames, size, size) * 2 - 1


@pytest.mark.parametrize("tf,frames", [(1, 3), (4, 9), (4, 1)])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_patch_vae_round_trip_is_exact(tf, frames, scale):
    vae = PatchVAE(spatial_factor=2, temporal_factor=tf, scale=scale)
    assert isinstance(vae, VideoVAE)
    video = _video(frames)
    latents = vae.encode(video)
    assert latents.shape == (2, 3 * tf * 4, latent_frames(frames, tf), 4, 4)
    assert vae.latent_channels == latents.shape[1]
    assert torch.equal(vae.decode(latents), video)


def test_patch_vae_layout():
    vae = PatchVAE(spatial_factor=2, temporal_factor=4)
    video = _video(5)
    latents = vae.encode(video)
    # latent 0 is frame 0 repeated; latent 1 is frames 1..4; channel order (rgb, time, row, column)
    cells = latents.reshape(2, 3, 4, 2, 2, 2, 4, 4)
    for k in range(4):
        assert torch.equal(cells[:, :, k, 0, 1, 0], video[:, :, 0, 0::2, 1::2])
        assert torch.equal(cells[:, :, k, 1, 0, 1], video[:, :, 1 + k, 1::2, 0::2])


def test_patch_vae_stream_decoder_matches_whole():
    vae = PatchVAE(spatial_factor=4, temporal_factor=4, scale=2.0)
    video = _video(1 + 4 * 5, size=16, batch=1)
    latents = vae.encode(video)
    stream = vae.stream_decoder()
    chunks = [stream(latents[:, :, :2]), stream(latents[:, :, 2:5]), stream(latents[:, :, 5:])]
    assert [c.shape[2] for c in chunks] == [5, 12, 4]
    assert torch.equal(torch.cat(chunks, 2), video)


def test_patch_vae_rejects_bad_shapes():
    vae = PatchVAE(spatial_factor=2, temporal_factor=4)
    with pytest.raises(ValueError, match=r"T = 1 \+ 4\*\(t-1\)"):
        vae.encode(_video(4))
    with pytest.raises(ValueError, match="spatial factor 2"):
        vae.encode(torch.zeros(1, 3, 5, 7, 8))
    with pytest.raises(UserError, match="scale"):
        PatchVAE(scale=0.0)
    assert video_frames(3, 4) == 9 and latent_frames(9, 4) == 3


# ------------------------------------------------------------------------------------------------- Wan VAE

Z_DIM = 4


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.0, 4.0],
    )
    root = tmp_path_factory.mktemp("wan")
    vae.save_pretrained(str(root / "vae"))
    return root


def test_wan_vae_encode_decode_shapes_and_normalisation(wan_dir):
    from diffusers import AutoencoderKLWan

    vae = WanVAE.from_pretrained(str(wan_dir), subfolder="vae")
    assert isinstance(vae, VideoVAE)
    assert (vae.latent_channels, vae.temporal_factor, vae.spatial_factor) == (Z_DIM, 4, 4)
    assert not any(p.requires_grad for p in vae.parameters())
    video = _video(5, size=16, batch=1)
    with torch.no_grad():
        latents = vae.encode(video)
        assert latents.shape == (1, Z_DIM, 2, 4, 4)
        decoded = vae.decode(latents)
        assert decoded.shape == video.shape
        assert decoded.abs().max() <= 1.0

        # parity with the library: normalised posterior mean in, raw decode out
        raw = AutoencoderKLWan.from_pretrained(str(wan_dir / "vae")).eval()
        mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).reshape(1, -1, 1, 1, 1)
        std = torch.tensor([2.0, 0.5, 1.0, 4.0]).reshape(1, -1, 1, 1, 1)
        z = raw.encode(video).latent_dist.mean
        torch.testing.assert_close(latents, (z - mean) / std)
        torch.testing.assert_close(decoded, raw.decode(z).sample.clamp(-1, 1))


def test_wan_vae_finds_vae_subfolder_and_samples(wan_dir):
    vae = WanVAE(str(wan_dir), sample=True)  # pipeline root: vae/ found automatically
    video = _video(1, size=16, batch=1)
    with torch.no_grad():
        a = vae.encode(video, generator=torch.Generator().manual_seed(0))
        b = vae.encode(video, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, Z_DIM, 1, 4, 4) and not torch.equal(a, b)


def test_wan_vae_stream_decoder_matches_whole(wan_dir):
    vae = WanVAE(str(wan_dir / "vae"))
    torch.manual_seed(3)
    latents = torch.randn(1, Z_DIM, 4, 4, 4)
    with torch.no_grad():
        whole = vae.decode(latents)
        stream = vae.stream_decoder()
        chunks = [stream(latents[:, :, :1]), stream(latents[:, :, 1:3]), stream(latents[:, :, 3:])]
    assert [c.shape[2] for c in chunks] == [1, 8, 4]
    torch.testing.assert_close(torch.cat(chunks, 2), whole, atol=1e-5, rtol=1e-5)


def test_wan_vae_user_errors(tmp_path, wan_dir):
    with pytest.raises(UserError, match="missing"):
        WanVAE(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        WanVAE(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="dtype"):
        WanVAE(str(wan_dir), dtype="int8")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="AutoencoderKLWan"):
        WanVAE(str(other))


def test_streamer_decodes_with_the_wan_causal_cache_like_the_whole_clip(wan_dir):
    """The AvatarStreamer's block-by-block decode through the real Wan causal decoder (feature cache carried
    across blocks; the first block 1 + 4*(fpb-1) frames, later ones 4*fpb) equals one decode of all the
    latents the stream produced, within 1e-4."""
    import numpy as np

    from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
    from lit_avatar.inference.streamer import AvatarStreamer
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    vae = WanVAE(str(wan_dir / "vae"))
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro", in_channels=Z_DIM, out_channels=Z_DIM, temporal_factor=4,
                                        num_layers=1)).eval()
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]),
                             urcr=URCROptions(max_frames=4, keep_frames=2))
    ref = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    streamer = AvatarStreamer(model, vae, None, options, ref, seed=0)
    latents, videos = [], []
    decode = streamer.decoder

    def spy(chunk):
        video = decode(chunk)
        latents.append(chunk.clone())
        videos.append(video.clone())
        return video

    streamer.decoder = spy
    audio = np.zeros(640 * 40, dtype=np.float32)
    frames = streamer.push_audio(audio)
    frames = np.concatenate([frames, streamer.flush()])
    assert len(latents) >= 4 and [v.shape[2] for v in videos[:2]] == [5, 8]
    with torch.no_grad():
        whole = vae.decode(torch.cat(latents, dim=2))
    streamed = torch.cat(videos, dim=2)
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max().item() <= 1e-4
