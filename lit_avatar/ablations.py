"""`make ablations`: distil every PSB/MCI/URCR variant on SynthTalk (CPU, tiny) and compare them.

Every variant starts from the same teacher and ODE init (those of `make demo`, reused or trained with
its settings) and is distilled with experiments/distill/synthtalk_tiny.yaml stacked with
experiments/ablations/<variant>.yaml into one TensorBoard root (<out>/tensorboard: one run per variant,
the same metric names, so the curves overlay), then rolled out for a long stream on held-out audio.
Results go to <out>/results/<variant>.json in the eval package's schema ({"aggregate": {...}}):
SynthSync r (true vs shuffled audio), boundary flicker (frame change across block seams / inside blocks)
and drift (first-vs-last window of SynthSync r and of frame brightness/contrast); <out>/ablations.md is
the table `lit-avatar table` builds from them.
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
    p.add_argument("--base", default="runs/demo",
                   help="a `make demo` folder whose data, teacher and ODE init are reused (trained here if missing)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=150, help="most DMD steps (critic updates) per variant")
    p.add_argument("--minutes", type=float, default=3.5, help="DMD time budget per variant")
    p.add_argument("--long-seconds", type=float, default=16.0, help="length of the long evaluation stream")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and evaluation noise")
    return p


def _base_stages(args: argparse.Namespace) -> tuple:
    """Data, teacher and ODE init of `make demo` (the same settings, so a demo run is reused as is)."""
    from pathlib import Path

    from lit_avatar import demo, pipeline

    defaults = demo.build_parser().parse_args(["--out", args.base, "--seed", str(args.seed)])
    base = Path(args.base).resolve()
    data, logs = base / "data", base / "logs"
    demo.make_data(data, defaults)
    teacher, _ = pipeline.fit_stage(pipeline.teacher_stage(defaults.teacher_steps, defaults.teacher_minutes),
                                    data, logs, args.seed, extra_callbacks=["lit_avatar.modules.callbacks.LossHistory"])
    ode, _ = pipeline.fit_stage(pipeline.ode_stage(teacher, defaults.ode_steps, defaults.ode_minutes), data, logs,
                                args.seed, extra_callbacks=["lit_avatar.modules.callbacks.LossHistory"])
    return data, teacher, ode


# Columns of the CPU ablation table (the keys evaluate_variant returns).
TABLE_COLUMNS = [
    {"key": "synthsync_r", "header": "SynthSync r", "better": "higher", "fmt": ".3f"},
    {"key": "synthsync_r_shuffled", "header": "r, shuffled audio", "better": "lower", "fmt": ".3f"},
    {"key": "flicker_ratio", "header": "seam/inside flicker", "better": "lower", "fmt": ".2f"},
    {"key": "drift_synthsync_r_first", "header": "r, first 2 s", "better": "higher", "fmt": ".3f"},
    {"key": "drift_synthsync_r_last", "header": "r, last 2 s", "better": "higher", "fmt": ".3f"},
]  # brightness/contrast drift stay in the results JSON: a change has no "better" direction to bold


def write_table(results: dict[str, str], out: str, command: str) -> str:
    """Build the Markdown table of the variants' results with the eval package's table builder."""
    import yaml

    from eval.tables import build_table

    config = {"title": "Ablations on SynthTalk (tiny, CPU; held-out identities, long stream)",
              "columns": TABLE_COLUMNS,
              "rows": [{"name": name, "results": path} for name, path in results.items()]}
    config_path = os.path.join(out, "ablations_table.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return build_table(config_path, os.path.join(out, "ablations.md"), command=command)


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
    from pathlib import Path

    from lit_avatar import pipeline
    from lit_avatar.errors import UserError

    args = _parser().parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise UserError(f"--variants: unknown {bad}; expected some of {','.join(VARIANTS)}")
    data, teacher, ode = _base_stages(args)
    out = Path(args.out).resolve()
    results_dir = out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m lit_avatar.ablations " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = {}
    for variant in variants:
        print(f"== {variant}: DMD from the shared teacher and ODE init", flush=True)
        stage = pipeline.dmd_stage(teacher, ode, args.steps, args.minutes, name=variant, ablation=variant)
        ckpt, _ = pipeline.fit_stage(stage, data, out / "tensorboard", args.seed)
        metrics = evaluate_variant(variant, str(ckpt), str(data), args.long_seconds)
        # the eval package's results schema ("aggregate"), so `lit-avatar table` reads it
        record = {"method": variant, "aggregate": metrics, "checkpoint": str(ckpt), "command": command,
                  "config": stage.configs}
        path = results_dir / f"{variant}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
        results[variant] = str(path)
        print(f"{variant}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    print(write_table(results, str(out), command))
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
