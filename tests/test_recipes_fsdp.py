"""The three 1.3B recipe YAMLs train for real under their own strategy (ModelParallelStrategy, FSDP2 units
per AvatarBlock, activation checkpointing, bf16 VAE beside fp32 networks) on 2 CPU processes with gloo,
through `lit-avatar fit` (Lightning launches the second process itself).

Each run stacks one override file on the recipe, which changes only: accelerator, devices, precision (fp32
on CPU), model sizes (the `micro-wan` preset, a tiny random AutoencoderKLWan and Wav2Vec2 of the recipe's
own classes), data paths and clip length, checkpoint paths between stages, the log folder, the clipping
threshold (lowered below the micro model's gradient norms so that clipping acts), and the probe callback that
observes the run (tests/fsdp_probe.py). Stages chain teacher -> ODE init -> Self-Forcing DMD
and `lit-avatar generate` streams an mp4 from the distilled checkpoint. The DMD run also writes a checkpoint
after step 2; a second run resumes from it and must end exactly where the uninterrupted one ended.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"teacher": ROOT / "experiments/teacher/wan1.3b.yaml", "ode": ROOT / "experiments/distill/wan1.3b_ode.yaml",
           "dmd": ROOT / "experiments/distill/wan1.3b.yaml"}
RUN_NAME = {"teacher": "teacher_wan1.3b", "ode": "distill_wan1.3b_ode", "dmd": "distill_wan1.3b"}
DMD_STEPS = 6  # critic_steps 5: generator updates at steps 0 and 5, so the resumed part has one
# clip thresholds below the micro model's gradient norms (teacher ~0.8, ODE ~0.13, critic ~0.8), so that
# clipping really scales the shards
CLIP = {"teacher": 0.5, "ode": 0.05, "dmd": 0.1}


def _write_inputs(folder: Path) -> dict[str, str]:
    """Tiny random weights of the recipes' VAE and audio classes, SynthTalk shards (one clip per training shard,
    so the data position is exact at shard granularity), and generate's audio and reference image."""
    import wave

    import numpy as np
    from captioned import caption_shard
    from PIL import Image

    from data_tools.synth import write_synthtalk
    from lit_avatar.micro_wan import write_weights

    weights = write_weights(folder, seed=0)  # 16 latent channels, 8x spatial, 4x temporal like Wan2.1's VAE
    write_synthtalk(folder / "data", clips=10, seconds=1.0, shards=8, size=32, seed=1234, val_identities=1,
                    identities=5, captions=False)  # captioned below
    for shard in (folder / "data").glob("*.tar"):  # captions, so the recipes' text encoder and guidance act
        caption_shard(shard, shard, lambda key, meta: f"a {'woman' if sum(map(ord, meta['identity'])) % 2 else 'man'} "
                                                      "talking in a studio")
    t = np.arange(24000) / 16000
    with wave.open(str(folder / "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes((0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) * 16000).astype(np.int16))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "ref.png")
    return {"vae": str(folder / "wan"), "w2v": str(folder / "w2v"), "data": str(folder / "data"),
            "umt5": weights["umt5"], "prompts": str(folder / "prompts")}


def _overrides(stage: str, inputs: dict[str, str], logs: Path, probe: Path, save_at_step: int = 0,
               weights: dict[str, str] | None = None) -> dict:
    nets = {"teacher": ["model"], "ode": ["generator", "teacher"], "dmd": ["generator", "critic", "teacher"]}[stage]
    model: dict = {name: {"init_args": {"preset": "micro-wan"}} for name in nets}
    if stage == "teacher":
        model["model"]["init_args"]["weights"] = None
    model["vae"] = {"init_args": {"path": inputs["vae"]}}
    model["audio_encoder"] = {"init_args": {"path": inputs["w2v"]}}
    # the recipe's text encoder at micro width (micro-wan's text_dim 16), its own prompt cache
    model["text_encoder"] = {"init_args": {"path": inputs["umt5"], "dtype": "float32", "cache_dir": inputs["prompts"]}}
    model.update(weights or {})
    trainer_clip = {}
    if stage == "dmd":
        model["grad_clip"] = CLIP[stage]
    else:
        trainer_clip = {"gradient_clip_val": CLIP[stage]}
    if stage == "ode":
        model["cache_dir"] = str(logs / "trajectories")
    return {
        "trainer": {"accelerator": "cpu", "devices": 2, "precision": "32", "enable_progress_bar": False, **trainer_clip,
                    "enable_model_summary": False,
                    "logger": {"init_args": {"save_dir": str(logs)}},
                    # added to the CLI's default callbacks (ModelCheckpoint with save_last)
                    "callbacks": [{"class_path": "tests.fsdp_probe.FSDPProbe",
                                   "init_args": {"folder": str(probe), "save_at_step": save_at_step}}]},
        "model": {"init_args": model},
        "data": {"init_args": {"train_shards": inputs["data"] + "/train-*.tar",
                               "val_shards": inputs["data"] + "/val-*.tar",
                               # whole 1 s clips (start fixed) in stored order: resumable exactly
                               "clip_frames": 25, "shuffle_buffer": 0, "num_workers": 0, "pin_memory": False}},
    }


def _run(args: list[str], timeout: int = 300) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lit_avatar.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stderr[-4000:]}"


def _fit(stage: str, folder: Path, inputs: dict[str, str], max_steps: int, ckpt_path: str | None = None,
         **kwargs) -> Path:
    """Run the stage's recipe with the override file; returns the run folder (logs, probe, checkpoints)."""
    folder.mkdir(parents=True)
    over = folder / "overrides.yaml"
    over.write_text(yaml.safe_dump(_overrides(stage, inputs, folder / "logs", folder, **kwargs)))
    extra = [f"--ckpt_path={ckpt_path}"] if ckpt_path else []
    _run(["fit", "--config", str(RECIPES[stage]), "--config", str(over), f"--trainer.max_steps={max_steps}", *extra])
    return folder


def _last(folder: Path, stage: str) -> Path:
    return folder / "logs" / RUN_NAME[stage] / "version_0" / "checkpoints" / "last.ckpt"


def _probes(folder: Path) -> list[dict]:
    return [json.loads((folder / f"probe_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes")
    inputs = _write_inputs(root / "inputs")
    runs = {"inputs": root / "inputs"}
    runs["teacher"] = _fit("teacher", root / "teacher", inputs, 3)
    teacher_ckpt = str(_last(runs["teacher"], "teacher"))
    runs["ode"] = _fit("ode", root / "ode", inputs, 3, weights={"teacher_weights": teacher_ckpt})
    runs["dmd"] = _fit("dmd", root / "dmd", inputs, DMD_STEPS, save_at_step=2,
                       weights={"teacher_weights": teacher_ckpt,
                                "generator_weights": str(_last(runs["ode"], "ode"))})
    runs["dmd_resumed"] = root / "dmd_resumed"
    runs["resume_args"] = (inputs, {"teacher_weights": teacher_ckpt,
                                    "generator_weights": str(_last(runs["ode"], "ode"))})
    return runs


def _check_norms(probes: list[dict], clip: float, logged_keys: dict[int, str]) -> tuple[int, set[str]]:
    """Logged norm == gathered full-gradient norm; both ranks scaled their shards by the same clip factor.
    Returns the optimizer steps checked and the logged keys compared."""
    steps, compared = 0, set()
    assert len(probes[0]["steps"]) == len(probes[1]["steps"])
    for a, b in zip(probes[0]["steps"], probes[1]["steps"]):
        assert (a["step"], a["optimizer"]) == (b["step"], b["optimizer"])
        assert a["full_norm"] == pytest.approx(b["full_norm"], rel=1e-6)
        key = logged_keys[a["optimizer"]]
        for record in (a, b):
            # Lightning's callback_metrics lack the generator's values of the very first batch (step 0)
            if key in record["logged"]:
                assert record["logged"][key] == pytest.approx(record["full_norm"], rel=1e-5, abs=1e-6)
                compared.add(key)
            expected = min(1.0, clip / (record["full_norm"] + 1e-6))
            assert record["local_after"] / record["local_before"] == pytest.approx(expected, rel=1e-5)
        steps += 1
    return steps, compared


def test_teacher_and_ode_recipes_train_under_fsdp2(chain):
    for stage, keys in (("teacher", {0: "train/grad_norm"}), ("ode", {0: "train/grad_norm"})):
        ckpt = torch.load(_last(chain[stage], stage), map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 3
        assert _check_norms(_probes(chain[stage]), CLIP[stage], keys) == (3, {"train/grad_norm"})
    teacher = torch.load(_last(chain["teacher"], "teacher"), map_location="cpu", weights_only=True)
    # whole tensors in one file: the micro-wan FFN weight is [64, 32], not a shard of it
    assert teacher["state_dict"]["ema_model.blocks.0.ffn.0.weight"].shape == (64, 32)
    assert teacher["lit_avatar"]["model"]["class_path"] == "lit_avatar.models.dit.AvatarDiT"
    # captions went through the recipe's text encoder, which the record names: two captions and the negative
    # prompt, each encoded once into the shared prompt cache (whatever the ranks and stages)
    assert teacher["lit_avatar"]["text_encoder"]["init_args"]["path"] == str(chain["inputs"] / "umt5")
    assert len(list((chain["inputs"] / "prompts").rglob("*.safetensors"))) == 3


def test_dmd_recipe_trains_and_generates(chain):
    ckpt = torch.load(_last(chain["dmd"], "dmd"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == DMD_STEPS and ckpt["generator_updates"] == 2
    state = ckpt["state_dict"]
    for name in ("generator", "generator_ema", "critic"):
        assert state[f"{name}.blocks.1.ffn.2.weight"].shape == (32, 64)
    probes = _probes(chain["dmd"])
    # generator (optimizer 0) at steps 0 and 5, critic (optimizer 1) at every step
    keys = {0: "train/generator_grad_norm", 1: "train/critic_grad_norm"}
    assert _check_norms(probes, CLIP["dmd"], keys) == (DMD_STEPS + 2, set(keys.values()))
    noise = [p["noise"] for p in probes]
    assert sorted(noise[0]) == [str(s) for s in range(DMD_STEPS)]
    assert all(noise[0][s] != noise[1][s] for s in noise[0])  # the ranks draw different noise
    out = chain["dmd"] / "video.mp4"
    _run(["generate", "--ckpt", str(_last(chain["dmd"], "dmd")), "--audio", str(chain["inputs"] / "speech.wav"),
          "--ref", str(chain["inputs"] / "ref.png"), "--out", str(out), "--no-progress", "--threads", "1"])
    sidecar = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else None
    assert out.stat().st_size > 1000 and sidecar is not None


@pytest.mark.slow
def test_dmd_resumed_after_step_2_equals_uninterrupted(chain):
    inputs, weights = chain["resume_args"]
    mid = chain["dmd"] / "step2.ckpt"
    assert torch.load(mid, map_location="cpu", weights_only=True)["global_step"] == 2
    resumed = _fit("dmd", chain["dmd_resumed"], inputs, DMD_STEPS, weights=weights, ckpt_path=str(mid))
    a = torch.load(_last(chain["dmd"], "dmd"), map_location="cpu", weights_only=True)
    b = torch.load(_last(resumed, "dmd"), map_location="cpu", weights_only=True)
    assert b["global_step"] == a["global_step"] == DMD_STEPS and b["generator_updates"] == a["generator_updates"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():  # generator, EMA, critic, teacher
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"]):
        # parameters that never get a gradient (the generator's text path) have no AdamW state; on loading,
        # torch.distributed.checkpoint initialises empty states for them (zero moments), nothing else
        assert opt_a["state"].keys() <= opt_b["state"].keys()
        for key in opt_b["state"].keys() - opt_a["state"].keys():
            assert not opt_b["state"][key]["exp_avg"].any() and not opt_b["state"][key]["exp_avg_sq"].any()
        for key in opt_a["state"]:
            for field in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(opt_b["state"][key][field], opt_a["state"][key][field], rtol=0, atol=1e-6)
    loader = lambda c: c["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # noqa: E731
    assert loader(a) == loader(b)  # the data position
    # the resumed steps drew the same noise as the uninterrupted ones, rank by rank
    for full, again in zip(_probes(chain["dmd"]), _probes(resumed)):
        assert sorted(again["noise"]) == [str(s) for s in range(2, DMD_STEPS)]
        for step, value in again["noise"].items():
            assert value == full["noise"][step]
