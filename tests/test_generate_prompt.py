"""`lit-avatar generate --prompt/--negative-prompt/--text-guidance` on tiny checkpoints written here: one whose
record names the tiny umT5, one trained without text."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from test_generate import _audio_file, _checkpoint, _expect_one_line_error, _image

from lit_avatar.checkpoint import generator_record
from lit_avatar.inference.generate_cli import main
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE
from lit_avatar.prompts import PromptEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def text_checkpoint(path, text_encoder_folder, max_length: int = 12) -> str:
    """A random micro student (text_dim 16, live text path) whose record names the tiny umT5."""
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro"))
    for block in model.blocks:
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
        torch.nn.init.normal_(block.cross_attn.o.weight, std=0.2)
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]), urcr=URCROptions(max_frames=8))
    record = generator_record("student", model, PatchVAE(spatial_factor=2), MelAudioEncoder(n_mels=16, normalize=False),
                              options, "generator.", video_size=(16, 16),
                              text_encoder=PromptEncoder(str(text_encoder_folder), max_length=max_length))
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    return str(path)


@pytest.fixture
def inputs(tmp_path, tiny_text_encoder):
    os.makedirs(tmp_path / "out")
    return {"ckpt": text_checkpoint(tmp_path / "text.ckpt", tiny_text_encoder),
            "audio": _audio_file(tmp_path / "speech.wav", 0.6), "ref": _image(tmp_path / "ref.png"),
            "out": tmp_path / "out", "cache": str(tmp_path / "prompts")}


def _run(inputs, name: str, *extra: str) -> tuple[np.ndarray, dict]:
    import av

    out = inputs["out"] / f"{name}.mp4"
    assert main(["--ckpt", inputs["ckpt"], "--audio", inputs["audio"], "--ref", inputs["ref"], "--out", str(out),
                 "--no-progress", "--prompt-cache", inputs["cache"], *extra]) == 0
    with av.open(str(out)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
    return frames, json.loads(out.with_suffix(".json").read_text())


def test_the_prompt_steers_the_video_and_is_recorded(inputs):
    plain, plain_sidecar = _run(inputs, "plain")
    smiling, sidecar = _run(inputs, "smiling", "--prompt", "a woman talking, smiling")
    again, _ = _run(inputs, "again", "--prompt", "a woman talking, smiling")
    assert plain_sidecar["prompt"] is None and plain_sidecar["text_guidance"] == 1.0
    assert sidecar["prompt"] == "a woman talking, smiling" and sidecar["negative_prompt"] is None
    assert plain.shape == smiling.shape and not np.array_equal(plain, smiling)
    assert np.array_equal(smiling, again)  # the second run read the embedding from the cache
    cached = [p for p in os.scandir(inputs["cache"]) if p.is_dir()]
    assert len(cached) == 1 and len(os.listdir(cached[0].path)) == 1


def test_text_guidance_against_the_prompt_itself_changes_nothing(inputs):
    """v_neg + G (v - v_neg) with v_neg = v is v: the video of --text-guidance 3 with the prompt as the negative
    prompt is the unguided one; another negative prompt changes it. Both prompts are recorded."""
    prompt = ["--prompt", "red hair smiling"]
    unguided, _ = _run(inputs, "unguided", *prompt)
    same, _ = _run(inputs, "same", *prompt, "--text-guidance", "3", "--negative-prompt", "red hair smiling")
    other, sidecar = _run(inputs, "other", *prompt, "--text-guidance", "3", "--negative-prompt", "mouth closed")
    # equal up to float rounding (one-LSB differences of BLAS kernels between allocations can flip a pixel that
    # x264 then codes differently; in isolation the videos are identical), far from another negative prompt's
    to_other = np.abs(other.astype(float) - unguided).mean()
    assert to_other > 1.0 and np.abs(same.astype(float) - unguided).mean() < 0.01 * to_other
    assert (sidecar["prompt"], sidecar["negative_prompt"], sidecar["text_guidance"]) == (
        "red hair smiling", "mouth closed", 3.0)
    assert sidecar["latency"]["blocks"] == 8  # 0.6 s = 15 frames in blocks of 2


def test_prompt_mistakes_are_one_line(inputs, tmp_path):
    plain = _checkpoint(tmp_path / "plain.ckpt")
    base = ["--audio", inputs["audio"], "--ref", inputs["ref"], "--out", str(inputs["out"] / "v.mp4"), "--no-progress"]
    text = ["--ckpt", inputs["ckpt"], *base]
    _expect_one_line_error(inputs, ["--ckpt", plain, *base, "--prompt", "a woman"],
                           f"^{plain}: trained without text \\(its record names no text encoder\\); --prompt needs")
    _expect_one_line_error(inputs, text + ["--prompt", "a", "--negative-prompt", "b"],
                           "--negative-prompt is only used with --text-guidance G != 1")
    _expect_one_line_error(inputs, text + ["--text-guidance", "2"], "--text-guidance needs --prompt")
    _expect_one_line_error(inputs, text + ["--prompt", "a", "--text-guidance", "0"],
                           "--text-guidance 0.0: expected a positive number")
    _expect_one_line_error(inputs, text + ["--prompt", "x" * 2001], "--prompt: 2001 characters; expected at most 2000")
