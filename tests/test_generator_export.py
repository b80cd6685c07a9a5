"""`lit-avatar export`: a checkpoint's generator as generator.json + model.safetensors. The folder holds no
pickle (every byte of it accounted for as JSON or raw tensor data), and generate/serve/training read it in
place of the .ckpt with the same result, bit for bit."""
from __future__ import annotations

import json
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_avatar.checkpoint import generator_record, load_generator, load_stage_weights
from lit_avatar.cli import main as cli_main
from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


def _student(path: Path, kind: str = "student") -> str:
    """A Lightning-like checkpoint: generator weights under "generator_ema.", other networks and training state
    beside them (which export must leave out)."""
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro", audio_feature_dim=16))
    for block in model.blocks:  # a non-zero audio path, so the audio reaches the frames
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]), mci=MCIOptions(frames=2),
                             urcr=URCROptions(max_frames=8, keep_frames=2))
    record = generator_record(kind, model, PatchVAE(spatial_factor=2, scale=2.0),
                              MelAudioEncoder(n_mels=16, normalize=False), options, "generator_ema.", (16, 16))
    state = {f"generator_ema.{k}": v for k, v in model.state_dict().items()}
    state.update({f"critic.{k}": torch.zeros_like(v) for k, v in model.state_dict().items()})
    torch.save({"state_dict": state, "lit_avatar": record, "epoch": 2, "optimizer_states": [{"lr": 0.1}]}, path)
    return str(path)


def _inputs(folder: Path, seconds: float) -> dict[str, str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    with wave.open(str(folder / "speech.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((rng.standard_normal(int(seconds * 16000)) * 3000).astype("<i2").tobytes())
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "ref.png")
    return {"audio": str(folder / "speech.wav"), "ref": str(folder / "ref.png")}


def _assert_no_pickle(folder: Path) -> None:
    """Only generator.json (JSON, nothing else) and model.safetensors (an 8-byte length, a JSON header, then the
    tensors' raw bytes and nothing more): no zip, no pickle stream can hide in either."""
    assert sorted(p.name for p in folder.iterdir()) == ["generator.json", "model.safetensors"]
    for path in folder.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"PK\x03\x04") and not data.startswith(b"\x80"), path  # zip / pickle protocol 2+
    json.loads((folder / "generator.json").read_text(encoding="utf-8"))
    data = (folder / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps
    assert 8 + length + spans[-1][1] == len(data)  # nothing after the tensors


def _generate(ckpt: str, files: dict, out: Path, monkeypatch) -> np.ndarray:
    """The frames `lit-avatar generate` hands its video writer (before H.264), through the real entry point."""
    import lit_avatar.data.media as media

    frames = []

    class Capturing(media.VideoWriter):
        def write(self, batch: np.ndarray) -> None:
            frames.extend(np.array(f, copy=True) for f in batch)
            super().write(batch)

    monkeypatch.setattr(media, "VideoWriter", Capturing)
    argv = ["generate", "--ckpt", ckpt, "--audio", files["audio"], "--ref", files["ref"], "--out", str(out),
            "--no-progress", "--seed", "3"]
    assert cli_main(argv) == 0
    return np.stack(frames)


def test_export_round_trip_is_bit_exact_for_three_seconds(tmp_path, monkeypatch, capsys):
    ckpt = _student(tmp_path / "student.ckpt")
    files = _inputs(tmp_path, 3.0)
    assert cli_main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "shared")]) == 0
    assert "wrote" in capsys.readouterr().out
    _assert_no_pickle(tmp_path / "shared")
    from_ckpt = _generate(ckpt, files, tmp_path / "a.mp4", monkeypatch)
    from_folder = _generate(str(tmp_path / "shared"), files, tmp_path / "b.mp4", monkeypatch)
    assert from_ckpt.shape == (75, 16, 16, 3) and from_ckpt.std() > 10  # 3 s at 25 fps, not a blank picture
    assert np.array_equal(from_ckpt, from_folder)
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["rollout"] == b["rollout"] and a["kind"] == b["kind"] == "student"


def test_the_exported_folder_is_the_generator_and_nothing_else(tmp_path):
    ckpt = _student(tmp_path / "student.ckpt")
    assert cli_main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "shared")]) == 0
    original, exported = load_generator(ckpt), load_generator(str(tmp_path / "shared"))
    state = exported.model.state_dict()
    assert state.keys() == original.model.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in original.model.state_dict().items())
    assert (exported.rollout_options, exported.video_size, exported.kind) == (original.rollout_options, (16, 16),
                                                                              "student")
    record = json.loads((tmp_path / "shared" / "generator.json").read_text())
    assert record["weights_prefix"] == "" and record["model"]["class_path"] == "lit_avatar.models.dit.AvatarDiT"
    fresh = AvatarDiT(config=get_preset("micro", audio_feature_dim=16))  # the next training stage reads it too
    assert load_stage_weights(fresh, str(tmp_path / "shared")) == ""
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())


def test_serve_reads_the_exported_folder(tmp_path):
    from lit_avatar.serve.cli import build_parser, build_server

    ckpt = _student(tmp_path / "student.ckpt")
    assert cli_main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "shared")]) == 0
    files = _inputs(tmp_path, 0.1)
    server = build_server(build_parser().parse_args(["--ckpt", str(tmp_path / "shared"), "--ref", files["ref"],
                                                     "--workers", "0"]))
    original = load_generator(ckpt).model.state_dict()
    served = server.engine.model.state_dict()
    assert all(torch.equal(v, served[k]) for k, v in original.items())


def test_export_mistakes_are_one_line_and_write_nothing(tmp_path, capsys):
    ckpt = _student(tmp_path / "student.ckpt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    (tmp_path / "plain.pt").write_bytes(b"")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    cases = [
        (["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")], "missing.ckpt: not found"),
        (["--ckpt", ckpt, "--out", str(tmp_path / "full")], "full: exists and is not an empty folder"),
        (["--ckpt", ckpt, "--out", str(tmp_path / "no" / "o")], "folder " + str(tmp_path / "no") + " does not exist"),
        (["--ckpt", str(tmp_path / "bare.ckpt"), "--out", str(tmp_path / "o")], "has no 'lit_avatar' generator"),
        (["--ckpt", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "o")], "not a readable torch checkpoint"),
        (["--ckpt", str(tmp_path), "--out", str(tmp_path / "o")], "is a folder without generator.json"),
    ]
    for argv, expected in cases:
        assert cli_main(["export", *argv]) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.ckpt", "full", "plain.pt", "student.ckpt"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def test_generate_refuses_a_teacher_before_building_anything(tmp_path, monkeypatch, capsys):
    import lit_avatar.checkpoint as checkpoint

    def no_build(*args, **kwargs):
        raise AssertionError("built a network before checking the checkpoint's kind")

    monkeypatch.setattr(checkpoint, "build_generator", no_build)
    teacher = _student(tmp_path / "teacher.ckpt", kind="teacher")
    assert cli_main(["export", "--ckpt", teacher, "--out", str(tmp_path / "teacher")]) == 0
    files = _inputs(tmp_path, 1.0)
    for ckpt in (teacher, str(tmp_path / "teacher")):
        argv = ["--ckpt", ckpt, "--audio", files["audio"], "--ref", files["ref"], "--out", str(tmp_path / "v.mp4")]
        assert cli_main(["generate", *argv]) == 2
        assert cli_main(["serve", "--ckpt", ckpt, "--ref", files["ref"], "--workers", "0"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and all("is a bidirectional teacher checkpoint" in line for line in err), err
        assert "generate streams" in err[0] and "serve streams" in err[1]
    assert not (tmp_path / "v.mp4").exists()
