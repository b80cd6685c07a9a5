"""`lit-avatar bench train`: one training step of each stage (teacher, ODE init, Self-Forcing DMD) on one
device at batch 1, with the step times and the peak memory, so a user knows what fits before renting a
cluster.

The LightningModules run under a Lightning Trainer as `lit-avatar fit` runs them (bf16-mixed on CUDA,
gradient checkpointing on the trained networks as the 1.3B recipes set it), on a synthetic batch of
precomputed latents and audio features (the frozen VAE and audio encoder are timed by `bench stream`).
Random weights: speed and memory do not depend on their values.

Steps per stage: `--steps` (default 2: the first pays kernel loading and autotuning, the second is warm).
Self-Forcing runs with critic_steps=2, so step 0 updates the generator and the critic and step 1 only
the critic; the time per generator update of the recipe (critic_steps=5) is step0 + 4 * step1.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bench.options import add_model_options
from lit_avatar.command import CommandParser, Namespace, int_list
from lit_avatar.errors import UserError, output_file

STAGES = ("teacher", "ode_init", "self_forcing")


def build_parser() -> CommandParser:
    p = CommandParser(prog="lit-avatar bench train", description=__doc__.split("\n\n")[0])
    add_model_options(p, preset="wan2.1-1.3b", height=480, width=832, latent_frames=21,
                      latent_frames_help="latent frames per training clip (21 = 81 video frames)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ", ".join(STAGES))
    p.add_argument("--steps", type=int, default=2, help="training steps timed per stage")
    p.add_argument("--spatial-factor", type=int, default=8, help="VAE spatial factor (latent = pixels / this)")
    p.add_argument("--audio-feature-dim", type=int, default=None, help="default: the preset's (wav2vec2-base: 9216)")
    p.add_argument("--teacher-substeps", type=int, default=4, help="ODE init: teacher substeps per level (1 makes "
                   "its trajectory sampling 4x cheaper; the training step itself is unchanged)")
    p.add_argument("--ode-cache", default=None, help="ODE init: trajectory cache folder; with --steps 2 step 0 samples "
                   "the teacher and step 1 reads the cache (the step a cached run trains with)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def memory_needed(module) -> int:
    """A lower bound of a stage's device memory: fp32 weights of every network, and for the trained ones
    their gradients and AdamW's two moments (activations come on top)."""
    total = 0
    for p in module.parameters():
        total += p.numel() * (16 if p.requires_grad else p.element_size())
    return total


class _StepTimes:
    """Lightning callback: wall time of every training batch, the device synchronised at both ends."""

    def __new__(cls, device: torch.device):
        from lightning.pytorch.callbacks import Callback

        class StepTimes(Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []
                self._start = 0.0

            def _sync(self) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self._sync()
                self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self._sync()
                self.seconds.append(time.perf_counter() - self._start)

        return StepTimes()


def synthetic_batch(cfg, args: Namespace, device: torch.device) -> dict:
    g = torch.Generator(device=device).manual_seed(args.seed)
    c, t = cfg.in_channels, args.latent_frames
    h, w = args.height // args.spatial_factor, args.width // args.spatial_factor
    frames = 1 + cfg.temporal_factor * (t - 1)
    return {"latents": torch.randn(1, c, t, h, w, generator=g, device=device),
            "ref_latent": torch.randn(1, c, 1, h, w, generator=g, device=device),
            "audio_feats": torch.randn(1, frames, cfg.audio_window, cfg.audio_feature_dim, generator=g, device=device),
            "mouth_box": torch.tensor([[0.35, 0.6, 0.65, 0.8]], device=device),
            "meta": {"key": ["bench"]}}


def _dit(args: Namespace, device: torch.device, trained: bool, seed: int):
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    overrides = {"gradient_checkpointing": trained}
    if args.audio_feature_dim:
        overrides["audio_feature_dim"] = args.audio_feature_dim
    torch.manual_seed(seed)
    with device:  # built in place: no host copy of 1.3B parameters
        return AvatarDiT(config=get_preset(args.preset, **overrides))


class _LatentVAE(torch.nn.Module):
    """The batch brings latents: a VAE that is never asked to encode (its geometry is all the modules read)."""

    def __init__(self, channels: int, temporal_factor: int, spatial_factor: int) -> None:
        super().__init__()
        self.latent_channels, self.temporal_factor, self.spatial_factor = channels, temporal_factor, spatial_factor

    def encode(self, video):
        raise RuntimeError("bench train feeds precomputed latents")

    def decode(self, latents):
        raise RuntimeError("bench train does not decode")


def build_module(stage: str, args: Namespace, device: torch.device):
    from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions

    cfg = _dit(args, torch.device("meta"), False, 0).config
    vae = _LatentVAE(cfg.in_channels, cfg.temporal_factor, args.spatial_factor)
    rollout = RolloutOptions(frames_per_block=args.frames_per_block,
                             psb=PSBOptions(steps=int_list(args.psb_steps, "--psb-steps")),
                             urcr=URCROptions(max_frames=max(args.latent_frames, args.frames_per_block + 3)))
    if stage == "teacher":
        from lit_avatar.modules.teacher import TeacherModule

        return TeacherModule(_dit(args, device, True, 0), vae, None, ema_settings=None), cfg
    if stage == "ode_init":
        from lit_avatar.modules.ode_init import ODEInitModule

        return ODEInitModule(_dit(args, device, True, 1), _dit(args, device, False, 0).requires_grad_(False),
                             rollout=rollout, vae=vae, ema_settings=None, teacher_substeps=args.teacher_substeps,
                             cache_dir=args.ode_cache), cfg
    from lit_avatar.modules.self_forcing import SelfForcingModule

    return SelfForcingModule(_dit(args, device, True, 1), _dit(args, device, False, 0).requires_grad_(False),
                             critic=_dit(args, device, True, 2), rollout=rollout, vae=vae, critic_steps=2,
                             ema_settings=None), cfg


def run_stage(stage: str, args: Namespace) -> dict:
    import lightning as L

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    module, cfg = build_module(stage, args, device)
    needed = memory_needed(module)
    if device.type == "cuda" and needed > torch.cuda.get_device_properties(device).total_memory:
        # one GPU cannot hold it; sharding (FSDP, `lit-avatar fit` on several GPUs) or offload would
        return {"skipped": f"needs at least {needed / 2**30:.1f} GiB (weights, gradients, AdamW) > the card's "
                           f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB",
                "memory_needed_lower_bound_bytes": needed}
    batch = synthetic_batch(cfg, args, device)
    timer = _StepTimes(device)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if device.type == "cuda" else "32-true", max_steps=args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[timer])
    loader = torch.utils.data.DataLoader([batch] * args.steps, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    result = {"steps": len(timer.seconds), "step_s": timer.seconds, "wall_s": time.perf_counter() - start,
              "trained_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
              "all_parameters": sum(p.numel() for p in module.parameters()),
              "memory_needed_lower_bound_bytes": needed}
    if stage == "ode_init":
        result["teacher_substeps"], result["trajectory_cache"] = args.teacher_substeps, args.ode_cache is not None
    if stage == "self_forcing" and len(timer.seconds) >= 2:
        result["critic_steps"] = 2
        result["generator_and_critic_step_s"] = timer.seconds[0]
        result["critic_only_step_s"] = timer.seconds[1]
        result["per_generator_update_at_critic_steps_5_s"] = timer.seconds[0] + 4 * timer.seconds[1]
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    del trainer, module, batch
    return result


def main(argv: list[str]) -> int:
    """Time one training step per stage and print the JSON (see --help)."""
    args = build_parser().parse(argv)
    int_list(args.psb_steps, "--psb-steps")
    if args.out:
        output_file(args.out, "--out")
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise UserError(f"--stages: unknown stage {unknown[0]!r}; expected some of {', '.join(STAGES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    from lit_avatar.inference.fast_path import configure_device

    result = {"benchmark": "train", "preset": args.preset, "height": args.height, "width": args.width,
              "latent_frames": args.latent_frames, "batch": 1, "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              **configure_device(args.device), "stages": {}}
    for stage in stages:
        try:
            result["stages"][stage] = run_stage(stage, args)
        except torch.OutOfMemoryError as err:  # what does not fit is the answer for that stage
            card = torch.cuda.get_device_properties(args.device).total_memory
            result["stages"][stage] = {"error": f"out of memory: {str(err).splitlines()[0][:300]}",
                                       "device_memory_bytes": card}
            torch.cuda.empty_cache()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from lit_avatar.data.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
