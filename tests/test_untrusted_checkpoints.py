"""A checkpoint is data: a generator record that names code to run is refused, in one line and with exit code 2,
by `lit-avatar generate`, `lit-avatar serve` and `lit-avatar export`, before anything it names is imported or
called (the file each payload would write is never created). Every slot x every attack x both checkpoint forms
(a torch .ckpt and an exported folder)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_avatar.checkpoint import generator_record
from lit_avatar.cli import main as cli_main
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE

SLOTS = ("model", "vae", "audio_encoder")
ATTACKS = ("popen", "os_system", "eval", "side_effect_class", "import_side_effect", "nested_class_path")


class WritesAFile:
    """A class with a side effect in __init__: it creates `path`."""

    def __init__(self, path: str) -> None:
        Path(path).touch()


def _payload(attack: str, target: Path) -> dict:
    """The spec an attacker puts into a slot; each one creates `target` if it is ever imported or called."""
    return {
        "popen": {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(target)]}},
        "os_system": {"class_path": "os.system", "init_args": {"command": f"touch {target}"}},
        "eval": {"class_path": "builtins.eval", "init_args": {"source": f"open({str(target)!r}, 'w').close()"}},
        "side_effect_class": {"class_path": f"{__name__}.WritesAFile", "init_args": {"path": str(target)}},
        "import_side_effect": {"class_path": "checkpoint_payload.Anything", "init_args": {}},
    }[attack]


def _genuine() -> tuple[AvatarDiT, dict]:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro", audio_feature_dim=16))
    options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]), urcr=URCROptions(max_frames=8))
    record = generator_record("student", model, PatchVAE(spatial_factor=2), MelAudioEncoder(n_mels=16,
                              normalize=False), options, "generator.", video_size=(16, 16))
    return model, record


def _attacked_record(slot: str, attack: str, target: Path) -> tuple[AvatarDiT, dict, str]:
    """(model, record with the attack in `slot`, the key the refusal must name)."""
    model, record = _genuine()
    if attack == "nested_class_path":  # an allowed class whose argument smuggles a spec in
        spec = record[slot]
        arg = sorted(spec["init_args"])[0]
        spec["init_args"][arg] = _payload("popen", target)
        return model, record, f"{slot}.init_args.{arg}.class_path: a nested class_path is not allowed"
    record[slot] = _payload(attack, target)
    return model, record, f"{slot}.class_path {record[slot]['class_path']!r}: not an allowed class"


def _as_checkpoint(folder: Path, model: AvatarDiT, record: dict) -> str:
    path = folder / "shared.ckpt"
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    return str(path)


def _as_exported_folder(folder: Path, model: AvatarDiT, record: dict) -> str:
    from safetensors.torch import save_file

    path = folder / "shared"
    path.mkdir()
    save_file(dict(model.state_dict()), str(path / "model.safetensors"))
    (path / "generator.json").write_text(json.dumps({**record, "weights_prefix": ""}))
    return str(path)


def _inputs(folder: Path) -> dict[str, str]:
    """One second of noise as a 16 kHz wav, a 16x16 reference, and where the video would go."""
    import wave

    from PIL import Image

    with wave.open(str(folder / "speech.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.random.default_rng(0).standard_normal(16000) * 3000).astype("<i2").tobytes())
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "ref.png")
    return {"audio": str(folder / "speech.wav"), "ref": str(folder / "ref.png"), "out": str(folder / "video.mp4")}


def _argv(command: str, ckpt: str, files: dict[str, str]) -> list[str]:
    if command == "generate":
        return ["generate", "--ckpt", ckpt, "--audio", files["audio"], "--ref", files["ref"], "--out", files["out"],
                "--no-progress"]
    if command == "serve":
        return ["serve", "--ckpt", ckpt, "--ref", files["ref"], "--port", "0", "--workers", "0"]
    return ["export", "--ckpt", ckpt, "--out", files["out"] + ".exported"]


@pytest.mark.parametrize("command", ["generate", "serve", "export"])
@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("slot", SLOTS)
def test_a_record_that_names_code_is_refused_and_nothing_runs(slot, attack, command, tmp_path, capsys, monkeypatch):
    target = tmp_path / "pwned"
    monkeypatch.setenv("LIT_AVATAR_TEST_PAYLOAD", str(target))  # checkpoint_payload writes it when imported
    model, record, refusal = _attacked_record(slot, attack, target)
    files = _inputs(tmp_path)
    for form, write in (("ckpt", _as_checkpoint), ("folder", _as_exported_folder)):
        (tmp_path / form).mkdir()
        ckpt = write(tmp_path / form, model, record)
        assert cli_main(_argv(command, ckpt, files)) == 2, form
        err = capsys.readouterr().err.splitlines()
        where = f"{ckpt}: lit_avatar." if form == "ckpt" else f"{ckpt}/generator.json: "
        assert len(err) == 1 and err[0].startswith(f"error: {where}{refusal}"), (form, err)
        assert not target.exists(), f"{form}: the payload ran"
        assert "checkpoint_payload" not in sys.modules, f"{form}: the module the record names was imported"
    assert not Path(files["out"]).exists() and not Path(files["out"] + ".exported").exists()  # nothing written


def test_the_payloads_do_run_when_called(tmp_path, monkeypatch):
    """The attacks above are real: called directly, each one creates its file (so the refusals guard something)."""
    import importlib
    import subprocess

    for n, attack in enumerate(("popen", "side_effect_class", "import_side_effect")):
        target = tmp_path / f"ran{n}"
        monkeypatch.setenv("LIT_AVATAR_TEST_PAYLOAD", str(target))
        spec = _payload(attack, target)
        module_name, _, name = spec["class_path"].rpartition(".")
        made = getattr(importlib.import_module(module_name), name)(**spec["init_args"])
        if isinstance(made, subprocess.Popen):
            made.wait()
        assert target.exists(), attack
        sys.modules.pop("checkpoint_payload", None)


def test_resume_reads_the_checkpoint_with_weights_only(synth_shards, tmp_path, monkeypatch):
    """`lit-avatar fit --ckpt_path` hands Trainer.fit weights_only=True (Lightning's own default, None, leaves it
    to torch, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD can turn off); an explicit --weights_only false is the user's."""
    import functools

    from lightning.pytorch import Trainer
    from test_configs import tiny_args

    from lit_avatar.lightning_cli import main

    seen = []

    @functools.wraps(Trainer.fit)  # the same signature: LightningCLI builds fit's options from it
    def fit(self, *args, **kwargs):
        seen.append(kwargs.get("weights_only"))

    monkeypatch.setattr(Trainer, "fit", fit)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"global_step": 1}, tmp_path / "last.ckpt")
    resume = f"--ckpt_path={tmp_path / 'last.ckpt'}"
    assert main(tiny_args(synth_shards, tmp_path, resume)) == 0
    assert main(tiny_args(synth_shards, tmp_path, resume, "--weights_only=false")) == 0
    assert seen == [True, False]
