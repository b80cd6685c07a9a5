"""`lit-avatar generate` end to end on a tiny random-weight student checkpoint written here."""
from __future__ import annotations

import json
import os

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
from lit_avatar.models.vae import PatchVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def _checkpoint(path, kind: str = "student", preset: str = "micro", size=(16, 16), fpb: int = 2) -> str:
    torch.manual_seed(0)
    overrides = {"audio_feature_dim": 16} if preset == "micro" else {}
    model = AvatarDiT(config=get_preset(preset, **overrides))
    encoder = MelAudioEncoder(n_mels=model.config.audio_feature_dim, normalize=False)
    options = RolloutOptions(frames_per_block=fpb, psb=PSBOptions(steps=[2, 1]), urcr=URCROptions(max_frames=8))
    record = generator_record(kind, model, PatchVAE(spatial_factor=2), encoder, options, "generator.", video_size=size)
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    return str(path)


def _audio_file(path, seconds: float, rate: int = 22050) -> str:
    """A stereo file at another rate, so the CLI's resampling and downmix are exercised."""
    from fractions import Fraction

    import av

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        pcm = (np.stack([wave, wave]) * 32767).astype(np.int16).T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def _image(path, size=(20, 28)) -> str:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    return {"ckpt": _checkpoint(tmp_path / "student.ckpt"), "audio": _audio_file(tmp_path / "speech.wav", 1.3),
            "ref": _image(tmp_path / "ref.png"), "out": tmp_path / "out"}


def _args(inputs, out) -> list[str]:
    return ["--ckpt", inputs["ckpt"], "--audio", inputs["audio"], "--ref", inputs["ref"], "--out", str(out),
            "--no-progress"]


def test_generate_writes_video_with_audio_of_matching_duration(inputs, capsys):
    import av

    os.makedirs(inputs["out"])
    out = inputs["out"] / "video.mp4"
    assert main(_args(inputs, out) + ["--psb-steps", "3,2", "--seed", "4", "--mouth-box", "0.3,0.6,0.7,0.8"]) == 0
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert (video.codec_context.height, video.codec_context.width) == (16, 16)
        frames = sum(1 for _ in container.decode(video))
    video_seconds = frames / 25
    assert abs(video_seconds - 1.3) <= 2 / 25  # within one block (2 frames)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["fps"] == 25 and sidecar["frames"] == frames
    assert sidecar["mouth_box"] == [0.3, 0.6, 0.7, 0.8]
    assert sidecar["rollout"]["psb"]["steps"] == [3, 2]
    assert sidecar["dtype"] == "float32" and sidecar["compile"] is False  # --dtype auto on a CPU
    assert sidecar["latency"]["blocks"] >= frames // 2 and sidecar["latency"]["time_to_first_frame_s"] > 0
    printed = capsys.readouterr().out
    assert "time to first frame" in printed and "real-time factor" in printed
    assert sorted(os.listdir(inputs["out"])) == ["video.json", "video.mp4"]


def test_generate_in_bfloat16(inputs):
    """--dtype bfloat16 runs the whole path (DiT, audio encoder, decode) with bf16 weights."""
    os.makedirs(inputs["out"])
    out = inputs["out"] / "bf16.mp4"
    assert main(_args(inputs, out) + ["--psb-steps", "2,1", "--dtype", "bfloat16", "--seconds", "0.5"]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["dtype"] == "bfloat16" and sidecar["frames"] >= 12


def _expect_one_line_error(inputs, argv, match: str) -> None:
    before = sorted(os.listdir(inputs["out"]))
    with pytest.raises(UserError, match=match) as err:
        main(argv)
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(inputs["out"])) == before  # no output, no temp file


def test_error_cases_leave_no_file(inputs, tmp_path):
    os.makedirs(inputs["out"])
    out = inputs["out"] / "video.mp4"
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"RIFF not really a wave file")
    _expect_one_line_error(inputs, _args({**inputs, "audio": str(bad_audio)}, out), "bad.wav")
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"\x89PNG broken")
    _expect_one_line_error(inputs, _args({**inputs, "ref": str(bad_image)}, out), "bad.png: cannot read as an image")
    short = _audio_file(tmp_path / "short.wav", 0.05)
    _expect_one_line_error(inputs, _args({**inputs, "audio": short}, out), "shorter than one block")
    teacher = _checkpoint(tmp_path / "teacher.ckpt", kind="teacher")
    _expect_one_line_error(inputs, _args({**inputs, "ckpt": teacher}, out), "expected an ode_init or student")
    _expect_one_line_error(inputs, _args(inputs, tmp_path / "missing" / "video.mp4"), "does not exist")
    _expect_one_line_error(inputs, _args(inputs, out) + ["--psb-steps", "8,x"], "--psb-steps")
    _expect_one_line_error(inputs, _args(inputs, out) + ["--dtype", "int8"], "--dtype 'int8': expected one of auto")
    _expect_one_line_error(inputs, _args(inputs, out) + ["--cuda-graphs"], "--cuda-graphs needs a CUDA device")


def test_dispatcher_prints_one_line(inputs, tmp_path, capsys):
    from lit_avatar.cli import main as cli_main

    code = cli_main(["generate"] + _args(inputs, tmp_path / "missing" / "video.mp4"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_ten_minute_audio_streams_to_the_end(tmp_path):
    """The tiny preset at 32x32 streams 10 minutes (15,000 frames) with bounded memory."""
    import time

    import av

    ckpt = _checkpoint(tmp_path / "tiny.ckpt", preset="tiny", size=(32, 32), fpb=3)
    audio = _audio_file(tmp_path / "long.wav", 600.0, rate=16000)
    out = tmp_path / "long.mp4"
    start = time.perf_counter()
    assert main(["--ckpt", ckpt, "--audio", audio, "--ref", _image(tmp_path / "ref.png", (40, 40)),
                 "--out", str(out), "--no-progress"]) == 0
    print(f"10-minute stream: {time.perf_counter() - start:.1f} s")
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    assert abs(frames - 15000) <= 3
