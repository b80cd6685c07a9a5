"""`make ablations`: distil every PSB/MCI/URCR variant on SynthTalk (CPU, tiny) and compare them.

Each variant is experiments/distill/synthtalk_tiny.yaml stacked with experiments/ablations/<variant>.yaml,
trained into one TensorBoard root (one run per variant, the same metric names), then rolled out for a
long stream on held-out audio. Results go to <out>/results/<variant>.json as
{"method": variant, "metrics": {...}, "config": [...], "command": ...}: SynthSync r (true vs shuffled
audio), boundary flicker (frame change across block seams / inside blocks) and drift (first-vs-last window
of SynthSync r and of frame brightness/contrast).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

VARIANTS = ("full", "no_psb", "no_mci", "no_urcr")
BASE = "experiments/distill/synthtalk_tiny.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_avatar.ablations", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablations", help="output root (TensorBoard runs, checkpoints, results)")
    p.add_argument("--data", default=None, help="SynthTalk folder (default: <out>/synthtalk, made if missing)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=60, help="training steps (critic updates) per variant")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: none, random teacher)")
    p.add_argument("--student-init", default=None, help="ODE-init checkpoint for the generator (default: none)")
    p.add_argument("--long-seconds", type=float, default=8.0, help="length of the long evaluation stream")
    return p


def _ensure_data(folder: str) -> None:
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return
    from data_tools.synth import write_synthtalk

    write_synthtalk(folder, clips=48, seconds=2.0, shards=2, size=32, seed=0, val_identities=2)


def train_variant(variant: str, args: argparse.Namespace, data: str) -> str:
    """Fit one variant; returns its last checkpoint."""
    from lit_avatar.lightning_cli import main as fit_main

    tb = os.path.join(args.out, "tensorboard")
    argv = ["fit", "--config", BASE, "--config", f"experiments/ablations/{variant}.yaml",
            f"--data.init_args.train_shards={data}/train-*.tar", f"--data.init_args.val_shards={data}/val-*.tar",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--data.init_args.clip_frames=8",
            f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={max(args.steps, 1)}",
            f"--trainer.logger.init_args.save_dir={tb}", f"--trainer.logger.init_args.name={variant}",
            "--trainer.logger.init_args.version=run", "--trainer.enable_progress_bar=false",
            f"--model.init_args.teacher_weights={args.teacher or 'null'}",
            f"--model.init_args.generator_weights={args.student_init or 'null'}"]
    fit_main(argv)
    return os.path.join(tb, variant, "run", "checkpoints", "last.ckpt")


def evaluate_variant(variant: str, ckpt: str, data: str, long_seconds: float) -> dict:
    """Long rollout on held-out audio: sync, seams and drift."""
    import numpy as np
    import torch

    from lit_avatar.data.datamodule import AvatarDataModule
    from lit_avatar.inference.loading import load_generator
    from lit_avatar.modules.clip_rollout import rollout_clip
    from lit_avatar.modules.distill_utils import clip_inputs, step_generator
    from lit_avatar.modules.rollout_metrics import boundary_flicker, window_stats
    from lit_avatar.modules.sample_logging import to_uint8_frames
    from lit_avatar.modules.teacher import sync_scores

    bundle = load_generator(ckpt)
    frames_long = int(round(long_seconds * 25))
    dm = AvatarDataModule(train_shards=f"{data}/train-*.tar", val_shards=f"{data}/val-*.tar", batch_size=4,
                          val_batch_size=4, clip_frames=50, size=32, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    # a long stream: the clip's audio looped to the target length
    reps = -(-frames_long * 640 // batch["audio"].shape[1])
    audio = batch["audio"].repeat(1, reps)[:, : frames_long * 640]
    long_batch = {"video": batch["video"][:, :, :1].expand(-1, -1, frames_long, -1, -1), "audio": audio,
                  "ref": batch["ref"], "mouth_box": batch["mouth_box"]}
    with torch.no_grad():
        x0, conds = clip_inputs(long_batch, bundle.vae, bundle.audio_encoder)
        latents, _ = rollout_clip(bundle.model, bundle.rollout_options, conds, tuple(x0.shape),
                                  generator=step_generator(0, 0, 1))
        video = bundle.vae.decode(latents).float().clamp(-1, 1)
    frames = to_uint8_frames(video)
    boxes, audio_np = long_batch["mouth_box"].numpy(), audio.numpy()
    sync = sync_scores(frames, boxes, audio_np)
    fpb_video = bundle.rollout_options.frames_per_block * int(getattr(bundle.vae, "temporal_factor", 1))
    flicker = boundary_flicker(video, fpb_video)
    window = 50  # 2 s windows
    r_windows = []
    for start in range(0, frames.shape[1] - window + 1, window):
        sl = slice(start, start + window)
        a = audio_np[:, start * 640:(start + window) * 640]
        r_windows.append(sync_scores(frames[:, sl], boxes, a)["r"])
    stats = window_stats(frames[0], window)
    return {
        "synthsync_r": sync["r"], "synthsync_r_shuffled": sync["r_shuffled"],
        "flicker_boundary": flicker["boundary"], "flicker_inside": flicker["inside"],
        "flicker_ratio": flicker["ratio"],
        "drift_synthsync_r_first": r_windows[0] if r_windows else float("nan"),
        "drift_synthsync_r_last": r_windows[-1] if r_windows else float("nan"),
        "drift_brightness_change": stats["mean"][-1] - stats["mean"][0],
        "drift_contrast_change": stats["std"][-1] - stats["std"][0],
        "frames": int(frames.shape[1]),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        from lit_avatar.errors import UserError

        raise UserError(f"--variants: unknown {bad}; expected some of {','.join(VARIANTS)}")
    data = args.data or os.path.join(args.out, "synthtalk")
    _ensure_data(data)
    results_dir = os.path.join(args.out, "results")
    os.makedirs(results_dir, exist_ok=True)
    command = "python -m lit_avatar.ablations " + shlex.join(argv if argv is not None else sys.argv[1:])
    for variant in variants:
        ckpt = train_variant(variant, args, data)
        metrics = evaluate_variant(variant, ckpt, data, args.long_seconds)
        record = {"method": variant, "metrics": metrics, "checkpoint": ckpt, "command": command,
                  "config": [BASE, f"experiments/ablations/{variant}.yaml"]}
        path = os.path.join(results_dir, f"{variant}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, path)
        print(f"{variant}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as err:  # UserError only; anything else is a bug and keeps its traceback
        from lit_avatar.errors import UserError

        if isinstance(err, UserError):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
