"""Every distillation and ablation YAML parses, instantiates and trains a step; ablations change only
their own key and only their own behaviour; the 1.3B recipe instantiates on the meta device with FSDP."""
import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "experiments" / "distill"
ABLATIONS = ROOT / "experiments" / "ablations"
TINY = DISTILL / "synthtalk_tiny.yaml"
VARIANT_KEY = {"no_psb": "psb", "no_mci": "mci", "no_urcr": "urcr"}


def resolved(*configs) -> dict:
    from lit_avatar.lightning_cli import main

    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return yaml.safe_load(out.getvalue())


def flatten(d, prefix=""):
    items = {}
    for k, v in d.items():
        if isinstance(v, dict):
            items.update(flatten(v, f"{prefix}{k}."))
        else:
            items[f"{prefix}{k}"] = v
    return items


def quick_fit_args(config, shards, tmp_path):
    return ["fit", "--config", str(config),
            f"--data.init_args.train_shards={shards}/train-*.tar", f"--data.init_args.val_shards={shards}/val-*.tar",
            "--data.init_args.batch_size=2", "--data.init_args.clip_frames=4", "--data.init_args.size=16",
            "--data.init_args.num_workers=0", "--model.init_args.teacher_weights=null",
            "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}"]


@pytest.mark.parametrize("name", ["synthtalk_tiny_ode.yaml", "synthtalk_tiny.yaml"])
def test_tiny_distill_configs_train_two_steps(name, synth_shards, tmp_path):
    from lit_avatar.lightning_cli import main

    args = quick_fit_args(DISTILL / name, synth_shards, tmp_path)
    if name == "synthtalk_tiny.yaml":
        args += ["--model.init_args.generator_weights=null", "--model.init_args.critic_steps=2",
                 "--data.init_args.clip_frames=4"]
    else:
        args += ["--model.init_args.teacher_substeps=1"]
    assert main(args) == 0
    ckpts = list(Path(tmp_path).rglob("last.ckpt"))
    assert ckpts, "no checkpoint written"
    ckpt = torch.load(ckpts[0], weights_only=True)
    assert ckpt["lit_avatar"]["kind"] == ("student" if name == "synthtalk_tiny.yaml" else "ode_init")
    assert ckpt["global_step"] == 2


def test_ode_stage_and_dmd_stage_share_the_rollout():
    ode = yaml.safe_load((DISTILL / "synthtalk_tiny_ode.yaml").read_text())
    dmd = yaml.safe_load(TINY.read_text())
    assert ode["model"]["init_args"]["rollout"] == dmd["model"]["init_args"]["rollout"]


def test_ablation_overrides_change_only_their_own_key():
    base = flatten(resolved(TINY))
    full = flatten(resolved(TINY, ABLATIONS / "full.yaml"))
    assert full == base
    for variant, key in VARIANT_KEY.items():
        other = flatten(resolved(TINY, ABLATIONS / f"{variant}.yaml"))
        diff = {k for k in full if full[k] != other.get(k)} | (set(other) - set(full))
        assert diff == {f"model.init_args.rollout.{key}.enabled"}, (variant, diff)
        assert other[f"model.init_args.rollout.{key}.enabled"] is False


def test_ablation_overrides_change_only_their_own_behaviour():
    """Run the rollout of each variant for many blocks: only the switched part of the records moves."""
    from lit_avatar.checkpoint import rollout_options_from
    from lit_avatar.inference.rollout import Rollout
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("micro")).eval()
    records = {}
    for variant in ["full", *VARIANT_KEY]:
        cfg = resolved(TINY, ABLATIONS / f"{variant}.yaml")["model"]["init_args"]["rollout"]
        rollout = Rollout(model, rollout_options_from(cfg))
        rollout.begin(None, None, 1, (4, 4))
        with torch.no_grad():
            for _ in range(7):
                rollout.next_block(None, shape=(1, 12, cfg["frames_per_block"], 4, 4))
        records[variant] = rollout.records
    full = records["full"]

    def column(variant, field):
        return [getattr(r, field) for r in records[variant]]

    # PSB: more steps for the first block when on, the same count everywhere when off
    assert [len(s) for s in column("full", "sigmas")][:2] == [7, 5]
    assert {len(s) for s in column("no_psb", "sigmas")} == {5}
    assert column("no_psb", "positions") == column("full", "positions")
    assert column("no_psb", "context_sigma") == column("full", "context_sigma")
    # MCI: the context is written clean when off
    assert set(column("full", "context_sigma")) == {0.1} and set(column("no_mci", "context_sigma")) == {0.0}
    assert column("no_mci", "sigmas") == column("full", "sigmas")
    assert column("no_mci", "positions") == column("full", "positions")
    # URCR: positions bounded by max_frames (8) with resets when on, growing without bound when off
    assert max(max(p) for p in column("full", "positions")) < 8 and any(column("full", "reset"))
    assert max(max(p) for p in column("no_urcr", "positions")) == 13 and not any(column("no_urcr", "reset"))
    assert column("no_urcr", "sigmas") == column("full", "sigmas")
    assert column("no_urcr", "context_sigma") == column("full", "context_sigma")
    assert len(full) == 7


@pytest.mark.parametrize("name", ["wan1.3b_ode.yaml", "wan1.3b.yaml"])
def test_wan_recipe_instantiates_on_meta_with_fsdp2_strategy(name, wan_width_text_encoder, tmp_path):
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

    from lit_avatar.lightning_cli import AvatarCLI

    path = DISTILL / name
    with torch.device("meta"):
        # a CPU trainer without the strategy (it shards on devices); the VAE/audio folders are not here
        cli = AvatarCLI(args=["--config", str(path), "--model.init_args.vae=lit_avatar.models.vae.PatchVAE",
                              "--model.init_args.audio_encoder=null",
                              f"--model.init_args.text_encoder.init_args.path={wan_width_text_encoder}",
                              f"--model.init_args.text_encoder.init_args.cache_dir={tmp_path}",
                              "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                              "--trainer.precision=32", "--trainer.logger=false"], run=False)
    module = cli.model
    assert module.text_encoder.text_dim == 4096 and module.text_encoder.max_length == 512
    assert module.hparams.negative_prompt.startswith("static, motionless")  # the teacher recipe's
    if name == "wan1.3b.yaml":
        assert module.dmd.text_guidance_scale == 4.0  # InfiniteTalk's text scale 5 as g = s - 1
    else:
        assert module.guidance.text_scale == 5.0 and module.guidance.audio_scale == 4.0
    assert module.generator.config.dim == 1536 and module.generator.config.num_layers == 30
    assert module.generator.config.gradient_checkpointing  # activation checkpointing per AvatarBlock
    backbone = sum(p.numel() for n, p in module.generator.named_parameters() if "audio" not in n)
    assert backbone == 1_418_996_800 + 4096
    assert module.generator.patch_embedding.weight.is_meta and module.teacher.head.head.weight.is_meta
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert module.rollout_options.frames_per_block == 3 and module.rollout_options.psb.steps == [8, 6, 4]
    spec = yaml.safe_load(path.read_text())
    assert spec["trainer"]["precision"] == "bf16-mixed"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate(parser.parse_object({"strategy": spec["trainer"]["strategy"]})).strategy
    assert isinstance(strategy, ModelParallelStrategy) and not strategy._save_distributed_checkpoint


def test_wan_stages_share_the_rollout_and_chain_checkpoints():
    ode = yaml.safe_load((DISTILL / "wan1.3b_ode.yaml").read_text())["model"]["init_args"]
    dmd = yaml.safe_load((DISTILL / "wan1.3b.yaml").read_text())["model"]["init_args"]
    assert ode["rollout"] == dmd["rollout"]
    assert ode["teacher_weights"] == "runs/teacher_wan1.3b/version_0/checkpoints/last.ckpt"
