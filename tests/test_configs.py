"""Every teacher YAML parses and instantiates; the CPU one trains, saves, resumes; the GPU one builds on meta."""
from pathlib import Path

import pytest
import torch
import yaml

from lit_avatar.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TEACHER = sorted((ROOT / "experiments" / "teacher").glob("*.yaml"))
TINY = ROOT / "experiments" / "teacher" / "synthtalk_tiny.yaml"
WAN = ROOT / "experiments" / "teacher" / "wan1.3b.yaml"


def tiny_args(shards: Path, save_dir: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(TINY),
        f"--data.init_args.train_shards={shards / 'train-*.tar'}",
        f"--data.init_args.val_shards={shards / 'val-*.tar'}",
        "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--model.init_args.sampler.steps=2", "--model.init_args.val_max_samples=2",
        *extra,
    ]


def _networks(path: Path, *names: str) -> list[tuple]:
    """(class_path, init_args without local weight paths or activation checkpointing) of model.init_args.<name>."""
    args = yaml.safe_load(path.read_text())["model"]["init_args"]
    out = []
    for name in names:
        net = dict(args[name])
        init = {k: v for k, v in (net.get("init_args") or {}).items() if k != "weights"}
        overrides = {k: v for k, v in (init.pop("overrides", None) or {}).items() if k != "gradient_checkpointing"}
        out.append((net["class_path"], init, overrides))
    return out


@pytest.mark.parametrize("teacher, distill", [("synthtalk_tiny", ("synthtalk_tiny_ode", "synthtalk_tiny")),
                                              ("wan1.3b", ("wan1.3b_ode", "wan1.3b"))])
def test_teacher_configs_chain_into_their_distillation_configs(teacher, distill):
    """Each teacher recipe's checkpoint loads into its distillation stages: the same DiT shape for their
    teacher and student, the same VAE and audio encoder (the student's latents and features are the teacher's)."""
    path = ROOT / "experiments" / "teacher" / f"{teacher}.yaml"
    assert path in TEACHER
    dit, vae, audio = _networks(path, "model", "vae", "audio_encoder")
    for name in distill:
        stage = ROOT / "experiments" / "distill" / f"{name}.yaml"
        assert _networks(stage, "teacher", "generator", "vae", "audio_encoder") == [dit, dit, vae, audio], name
    if teacher == "wan1.3b":  # captions embed alike in every stage: the student learns the teacher's text
        text = _networks(path, "text_encoder")
        assert all(_networks(ROOT / "experiments" / "distill" / f"{n}.yaml", "text_encoder") == text for n in distill)


@pytest.mark.parametrize("path", TEACHER, ids=lambda p: p.name)
def test_config_parses(path, capsys):
    from lit_avatar.lightning_cli import main

    assert main(["fit", "--config", str(path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_avatar.modules.teacher.TeacherModule"
    assert printed["model"]["init_args"]["mouth_weight"] > 1  # avatar data: mouth weighting on


def test_tiny_trains_saves_config_and_resumes(synth_shards, tmp_path):
    from lit_avatar.lightning_cli import CONFIG_CHECKPOINT_KEY, main

    assert main(tiny_args(synth_shards, tmp_path, "--trainer.max_steps=2", "--trainer.val_check_interval=2")) == 0
    run = tmp_path / "teacher_synthtalk_tiny" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 2 and saved["data"]["init_args"]["batch_size"] == 2
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2
    in_ckpt = yaml.safe_load(ckpt[CONFIG_CHECKPOINT_KEY])
    assert in_ckpt["model"]["init_args"]["model"]["init_args"]["preset"] == "tiny"
    assert ckpt["lit_avatar"]["kind"] == "teacher" and ckpt["lit_avatar"]["weights_prefix"] == "ema_model."
    assert any(k.startswith("ema_model.") for k in ckpt["state_dict"])
    assert len(list((run / "samples").glob("*.mp4"))) == 2  # validation sampled and wrote clips
    # resume: the optimizer state and step counter continue from last.ckpt
    assert main(tiny_args(synth_shards, tmp_path, "--trainer.max_steps=3", "--trainer.val_check_interval=50",
                          f"--ckpt_path={last}")) == 0
    resumed = torch.load(tmp_path / "teacher_synthtalk_tiny" / "version_1" / "checkpoints" / "last.ckpt",
                         weights_only=True, map_location="cpu")
    assert resumed["global_step"] == 3


def test_unknown_key_is_one_line(tmp_path, capsys):
    from lit_avatar.cli import main as cli_main

    bad = yaml.safe_load(TINY.read_text())
    bad["model"]["init_args"]["mouth_wieght"] = 3.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli_main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mouth_wieght" in err[0] and err[0].startswith("error:")


def test_missing_config_file_is_user_error():
    from lit_avatar.lightning_cli import main

    with pytest.raises(UserError, match="nope.yaml"):
        main(["fit", "--config", "nope.yaml"])


def test_stacked_configs_later_wins(tmp_path, capsys):
    from lit_avatar.lightning_cli import main

    override = tmp_path / "o.yaml"
    override.write_text("model:\n  init_args:\n    mouth_weight: 1.0\n    optimizer:\n      init_args: {lr: 3.0e-4}\n")
    assert main(["fit", "--config", str(TINY), "--config", str(override), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    optimizer = printed["model"]["init_args"]["optimizer"]
    assert printed["model"]["init_args"]["mouth_weight"] == 1.0 and optimizer["init_args"]["lr"] == 3.0e-4
    # one init arg overridden; the optimizer class and its other arguments stay the base file's
    assert optimizer["class_path"] == "torch.optim.AdamW" and optimizer["init_args"]["betas"] == [0.9, 0.99]
    assert printed["model"]["init_args"]["model"]["init_args"]["preset"] == "tiny"


def test_yaml_swaps_optimizer_and_schedule_and_training_uses_them(synth_shards, tmp_path):
    """An override file, no code: the teacher trains with SGD at its own learning rate under a 4-step warm-up."""
    from lit_avatar.lightning_cli import AvatarCLI

    override = tmp_path / "sgd.yaml"
    override.write_text(yaml.safe_dump({"model": {"init_args": {
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.0}},
        "lr_scheduler": {"class_path": "lit_avatar.modules.optim.LinearWarmup", "init_args": {"warmup_steps": 4}},
    }}}))
    cli = AvatarCLI(args=tiny_args(synth_shards, tmp_path, "--config", str(override), "--trainer.max_steps=2",
                                   "--trainer.limit_val_batches=0"))
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.SGD and cli.trainer.global_step == 2
    settings = [(g["initial_lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups]
    assert settings == [(0.05, 0.5, 0.0)] * 2
    assert [config.scheduler.__class__.__name__ for config in cli.trainer.lr_scheduler_configs] == ["LinearWarmup"]
    # the learning rate logged at the second step, then the one after two warm-up steps
    assert cli.trainer.callback_metrics["train/lr"].item() == pytest.approx(0.05 * 2 / 4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 3 / 4)
    trained = [p for p in cli.model.model.parameters() if p.requires_grad]
    assert all("momentum_buffer" in optimizer.state[p] for p in trained)  # SGD's own state: it took the steps


def test_wan_recipe_on_meta_device(wan_width_text_encoder, tmp_path):
    """The GPU recipe builds at full size without memory or weights: the DiT on meta skips loading.

    The VAE and wav2vec2 load real local weights in their constructors, so weightless stand-ins replace
    them here, and a tiny umT5 of umT5-XXL's width stands in for it; the strategy is parsed and built on its own
    (it shards in configure_model, on devices).
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

    from lit_avatar.lightning_cli import AvatarCLI

    with torch.device("meta"):
        cli = AvatarCLI(args=["--config", str(WAN), "--model.init_args.vae=lit_avatar.models.vae.PatchVAE",
                              "--model.init_args.vae.spatial_factor=8", "--model.init_args.audio_encoder=null",
                              f"--model.init_args.text_encoder.init_args.path={wan_width_text_encoder}",
                              f"--model.init_args.text_encoder.init_args.cache_dir={tmp_path}",
                              "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32",
                              "--trainer.strategy=auto", "--trainer.logger=false"], run=False)
    dit = cli.model.model
    text = cli.model.text_encoder  # captions are read: umT5 of the DiT's text width, Wan's 512 tokens, bf16
    assert (text.text_dim, text.max_length, text.dtype) == (dit.config.text_dim, 512, "bfloat16")
    assert (cli.model.condition_dropout.text, cli.model.condition_dropout.audio) == (0.1, 0.1)  # set in the YAML
    sampler = cli.model.hparams.sampler
    assert (sampler["audio_guidance"], sampler["text_guidance"]) == (4.0, 5.0) and sampler["negative_prompt"]
    assert all(p.is_meta for p in dit.parameters())
    backbone = sum(p.numel() for n, p in dit.named_parameters() if "audio" not in n)
    assert backbone == 1_418_996_800 + 4096  # diffusers' WanTransformer3DModel + the learned null text
    assert sum(p.numel() for p in dit.parameters()) == 1_738_687_552
    assert cli.model.sigma_sampler.shift == 5.0 and cli.model.ema_model is not None
    assert dit.config.gradient_checkpointing  # activation checkpointing per AvatarBlock
    cfg = cli.parser.parse_args(["--config", str(WAN)])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 1.0
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    built = parser.instantiate(parser.parse_object({"strategy": cfg.trainer.strategy.as_dict()})).strategy
    assert isinstance(built, ModelParallelStrategy) and not built._save_distributed_checkpoint


def test_constructor_user_error_surfaces_as_itself():
    from lit_avatar.lightning_cli import main

    with pytest.raises(UserError, match="batch_size"):
        main(["fit", "--config", str(TINY), "--data.init_args.batch_size=0", "--trainer.logger=false"])
