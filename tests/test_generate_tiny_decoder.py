"""`lit-avatar generate --decoder tiny`: a Wan-VAE checkpoint streamed through the tiny decoder, and its mistakes.

Everything is written here: a tiny random AutoencoderKLWan at Wan's latent grid (4x time, 8x space), a micro
student on its latents, and a tiny decoder in the taew2_1 key layout with the same latent channels.
"""
from __future__ import annotations

import json
import os
import wave

import numpy as np
import pytest
import torch

from lit_avatar.checkpoint import generator_record
from lit_avatar.errors import UserError
from lit_avatar.inference.generate_cli import main
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.taehv import TinyDecodedVAE, TinyDecoder
from lit_avatar.models.vae import PatchVAE, WanVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Z_DIM = 4


def _wan_vae(folder) -> WanVAE:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[False, True, True], latents_mean=[0.0] * Z_DIM,
                     latents_std=[1.0] * Z_DIM).save_pretrained(str(folder))
    return WanVAE(str(folder))


def _checkpoint(path, vae, temporal_factor: int) -> str:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro", audio_feature_dim=16, in_channels=vae.latent_channels,
                                        out_channels=vae.latent_channels, temporal_factor=temporal_factor))
    encoder = MelAudioEncoder(n_mels=16, normalize=False)
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]), urcr=URCROptions(max_frames=8))
    record = generator_record("student", model, vae, encoder, options, "generator.", video_size=(32, 32))
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    return str(path)


def _tiny_weights(path) -> str:
    torch.manual_seed(1)
    torch.save(TinyDecoder(Z_DIM, (8, 8, 8, 8)).state_dict(), path)
    return str(path)


def _wav(path, seconds: float) -> str:
    t = np.arange(int(seconds * 16000)) / 16000
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
        handle.writeframes((0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16).tobytes())
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_decoder")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "ref.png")
    return {"ckpt": _checkpoint(root / "wan.ckpt", _wan_vae(root / "vae"), 4), "ref": str(root / "ref.png"),
            "audio": _wav(root / "speech.wav", 1.0), "tiny": _tiny_weights(root / "taew2_1.pth"), "root": root}


def _args(files, out, *extra: str) -> list[str]:
    return ["--ckpt", files["ckpt"], "--audio", files["audio"], "--ref", files["ref"], "--out", str(out),
            "--no-progress", *extra]


def test_generate_streams_through_the_tiny_decoder(files, tmp_path, monkeypatch):
    """The same checkpoint and audio give the same number of frames with either decoder; with `tiny`, every block
    the streamer decodes goes through the tiny decoder's stream (spied), and the sidecar says which one ran."""
    calls = []
    original = TinyDecodedVAE.stream_decoder

    def spy(self):
        decoder = original(self)
        calls.append(decoder)
        return decoder

    monkeypatch.setattr(TinyDecodedVAE, "stream_decoder", spy)
    assert main(_args(files, tmp_path / "full.mp4")) == 0 and not calls
    assert main(_args(files, tmp_path / "tiny.mp4", "--decoder", "tiny", "--decoder-path", files["tiny"])) == 0
    full, tiny = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("full", "tiny"))
    assert len(calls) == 1 and calls[0]._started  # one stream, used
    assert (full["decoder"], tiny["decoder"]) == ("full", "tiny")
    assert tiny["frames"] == full["frames"] == 25 and (tiny["height"], tiny["width"]) == (32, 32)


def test_decoder_mistakes_are_one_line_and_write_nothing(files, tmp_path):
    out = tmp_path / "video.mp4"
    cases = [
        (["--decoder", "tiny"], r"--decoder tiny needs --decoder-path PATH \(a TAEHV taew2_1 \.pth or \.safetensors"),
        (["--decoder-path", files["tiny"]], r"--decoder-path .*taew2_1\.pth: only used with --decoder tiny"),
        (["--decoder", "tiny", "--decoder-path", str(tmp_path / "nope.pth")], r"--decoder-path .*nope\.pth: not found"),
        (["--decoder", "small"], r"--decoder"),
    ]
    torch.save(TinyDecoder(2, (8, 8, 8, 8)).state_dict(), tmp_path / "two.pth")
    cases.append((["--decoder", "tiny", "--decoder-path", str(tmp_path / "two.pth")],
                  r"--decoder tiny: the checkpoint's WanVAE makes latents of 4 channels, 4x in time, 8x in space; "
                  r"the tiny decoder decodes 2 channels"))
    patch_ckpt = _checkpoint(tmp_path / "patch.ckpt", PatchVAE(spatial_factor=2), 1)
    for extra, match in cases:
        with pytest.raises(UserError, match=match) as err:
            main(_args(files, out, *extra))
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"checkpoint's PatchVAE makes latents of 12 channels"):
        main(_args({**files, "ckpt": patch_ckpt}, out, "--decoder", "tiny", "--decoder-path", files["tiny"]))
    assert sorted(os.listdir(tmp_path)) == ["patch.ckpt", "two.pth"]


def test_serve_decodes_through_the_tiny_decoder_in_its_engine_and_its_workers(files):
    """`serve --decoder tiny`: the server's engine and every worker's engine (EngineSpec, rebuilt in the worker
    process) decode with the tiny decoder; their streams give the frames of a streamer built the generate way."""
    from lit_avatar.checkpoint import load_generator
    from lit_avatar.inference.decoder_option import with_decoder
    from lit_avatar.inference.streamer import AvatarStreamer
    from lit_avatar.serve.cli import build_parser, build_server
    from lit_avatar.serve.workers import EngineSpec

    args = build_parser().parse_args(["--ckpt", files["ckpt"], "--ref", files["ref"], "--port", "0", "--workers",
                                      "0", "--decoder", "tiny", "--decoder-path", files["tiny"]])
    engine = build_server(args).engine
    spec = EngineSpec(files["ckpt"], engine.ref_image, decoder="tiny", decoder_path=files["tiny"])
    worker_engine = spec.build()
    assert isinstance(engine.vae, TinyDecodedVAE) and isinstance(worker_engine.vae, TinyDecodedVAE)
    bundle = load_generator(files["ckpt"])
    reference = AvatarStreamer(bundle.model, with_decoder(bundle.vae, "tiny", files["tiny"]), bundle.audio_encoder,
                               bundle.rollout_options, engine.ref_image, seed=0)
    audio = (0.2 * np.sin(np.linspace(0, 400, 16000))).astype(np.float32)
    expected = np.concatenate([reference.push_audio(audio), reference.flush()])
    for built in (engine, worker_engine):
        streamer = built.new_streamer()
        frames = np.concatenate([streamer.push_audio(audio), streamer.flush()])
        assert frames.shape == expected.shape == (25, 32, 32, 3) and np.array_equal(frames, expected)


def test_serve_decoder_mistakes_are_one_line(files, tmp_path):
    from lit_avatar.serve.cli import build_parser, build_server

    base = ["--ckpt", files["ckpt"], "--ref", files["ref"], "--port", "0", "--workers", "0"]
    cases = [(["--decoder", "tiny"], r"--decoder tiny needs --decoder-path PATH"),
             (["--decoder-path", files["tiny"]], r"only used with --decoder tiny"),
             (["--decoder", "tiny", "--decoder-path", str(tmp_path / "nope.pth")], r"nope\.pth: not found")]
    for extra, match in cases:
        with pytest.raises(UserError, match=match):
            build_server(build_parser().parse_args(base + extra))
