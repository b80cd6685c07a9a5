"""Bad input through the `lit-avatar` entry point: one line naming the thing, exit code 2, no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
TINY = "experiments/teacher/synthtalk_tiny.yaml"


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run `lit-avatar ARGV` as a user would; Lightning's own INFO lines may precede the error."""
    proc = subprocess.run([sys.executable, "-m", "lit_avatar.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def _fit(tmp_path, *extra: str) -> list[str]:
    return ["fit", "--config", TINY, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--trainer.max_steps=1", *extra]


def test_shard_path_that_does_not_exist(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "train-000000.tar"
    line = _one_line_error(capsys, _fit(tmp_path, f"--data.init_args.train_shards={missing}"))
    assert str(missing) in line


def test_glob_that_matches_nothing(capsys, tmp_path):
    pattern = str(tmp_path / "train-*.tar")
    line = _one_line_error(capsys, _fit(tmp_path, f"--data.init_args.train_shards={pattern}"))
    assert pattern in line and "match" in line


def test_unknown_yaml_key(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    mouth_wieght: 3\n")
    line = _one_line_error(capsys, ["fit", "--config", TINY, "--config", str(bad)])
    assert "mouth_wieght" in line


def test_checkpoint_whose_keys_do_not_fit(capsys, tmp_path):
    ckpt = tmp_path / "other.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(7, 7)}, str(ckpt))
    line = _one_line_error(capsys, _fit(tmp_path, f"--model.init_args.model.init_args.weights={ckpt}"))
    assert str(ckpt) in line and "blocks.0.self_attn.q.weight" in line


def test_video_without_audio(capsys, tmp_path):
    """A real student checkpoint, so the audio file (a video without an audio stream) is what fails."""
    from PIL import Image
    from test_generate import _checkpoint

    from lit_avatar.data.media import write_video

    ckpt = _checkpoint(tmp_path / "student.ckpt")
    silent = tmp_path / "silent.mp4"
    write_video(silent, np.zeros((10, 32, 32, 3), dtype=np.uint8), fps=25)
    ref = tmp_path / "ref.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(ref)
    out = tmp_path / "out.mp4"
    line = _one_line_error(capsys, ["generate", "--ckpt", ckpt, "--audio", str(silent), "--ref", str(ref),
                                    "--out", str(out)])
    assert str(silent) in line and "has no audio stream" in line, line
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_options_file_of_the_wrong_shape_is_named_from_the_command_line(capsys, tmp_path):
    """LightningCLI reads sys.argv itself here (the launcher re-runs it on other ranks): the file is still named."""
    bad = tmp_path / "list.yaml"
    bad.write_text("- just\n- a list\n")
    line = _one_line_error(capsys, ["validate", "--config", str(bad)])
    assert str(bad) in line, line
