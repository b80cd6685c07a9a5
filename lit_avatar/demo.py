"""`make demo`: SynthTalk data -> a few minutes of tiny-teacher training on CPU -> a lip-synced clip.

    python -m lit_avatar.demo --out runs/demo

1. writes a SynthTalk set (`data_tools synth`), with identities held out for validation;
2. trains the teacher of experiments/teacher/synthtalk_tiny.yaml through the same LightningCLI entry as
   `lit-avatar fit`, with only the data paths, the step count and the log folder overridden;
3. samples clips for held-out identities from their audio and reference frame with the EMA weights;
4. writes them as mp4 with the audio track (and a real-vs-generated comparison) and prints a summary:
   the loss at the start and the end, SynthSync r against the true audio and against shuffled audio
   (the chance level), and where everything is.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "experiments" / "teacher" / "synthtalk_tiny.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_avatar.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (data, logs, clips, summary.json)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="teacher config to train")
    p.add_argument("--steps", type=int, default=600, help="most training steps (about 1 s each on 2 idle CPU cores)")
    p.add_argument("--minutes", type=float, default=7.0,
                   help="training time budget; training stops at --steps or after this long, whichever is first")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a machine shared with other jobs)")
    p.add_argument("--clips", type=int, default=240, help="SynthTalk clips to generate (train + held out)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each SynthTalk clip")
    p.add_argument("--val-identities", type=int, default=4, help="identities held out for sampling")
    p.add_argument("--sample-frames", type=int, default=50, help="frames per sampled clip (25 fps)")
    p.add_argument("--num-samples", type=int, default=4, help="held-out clips to sample")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling noise")
    return p


def make_data(folder: Path, args: argparse.Namespace) -> dict:
    """Write the SynthTalk set once; a later run with the same folder reuses it."""
    from data_tools.synth import write_synthtalk

    manifest = folder / "manifest.json"
    wanted = {"clips": args.clips, "seconds": args.seconds, "seed": args.seed, "val_identities": args.val_identities}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("demo_args") == wanted:
            return old
    print(f"[1/4] writing SynthTalk: {args.clips} clips of {args.seconds:g} s ...", flush=True)
    info = write_synthtalk(folder, clips=args.clips, seconds=args.seconds, shards=4, size=32, seed=args.seed,
                           val_identities=args.val_identities)
    info["demo_args"] = wanted
    manifest.write_text(json.dumps(info, indent=1))
    return info


def train(data: Path, logs: Path, args: argparse.Namespace):
    """Fit the teacher through the project's LightningCLI; returns (module, loss history, run dir)."""
    from lit_avatar.lightning_cli import AvatarCLI
    from lit_avatar.modules.callbacks import LossHistory

    cli = AvatarCLI(args=[
        "fit", "--config", args.config,
        f"--seed_everything={args.seed}",
        f"--data.init_args.train_shards={data / 'train-*.tar'}",
        f"--data.init_args.val_shards={data / 'val-*.tar'}",
        f"--trainer.max_steps={args.steps}",
        f"--trainer.max_time={_duration(args.minutes)}",
        # validation (samples and SynthSync in TensorBoard) a few times per run
        f"--trainer.val_check_interval={max(1, min(100, args.steps))}",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.logger.init_args.name=teacher",
        "--trainer.callbacks+=lit_avatar.modules.callbacks.LossHistory",
    ])
    history = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LossHistory))
    return cli.model, history, Path(cli.trainer.log_dir)


def _duration(minutes: float) -> str:
    """Lightning's max_time format DD:HH:MM:SS."""
    total = max(1, int(round(minutes * 60)))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def held_out_batch(data: Path, args: argparse.Namespace) -> dict:
    """Clips of held-out identities: their audio and reference drive the samples."""
    from lit_avatar.data.datamodule import AvatarDataModule

    dm = AvatarDataModule(train_shards=None, val_shards=str(data / "val-*.tar"), batch_size=args.num_samples,
                          num_workers=0, clip_frames=args.sample_frames, size=32, seed=args.seed)
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def sample_and_score(module, batch: dict, out: Path, args: argparse.Namespace) -> dict:
    """Sample, write mp4s with audio, and measure SynthSync on generated and real clips."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from eval.synthsync import synthsync
    from lit_avatar.data.media import write_video
    from lit_avatar.modules.sample_logging import to_uint8_frames
    from lit_avatar.modules.teacher import sync_scores

    module.eval()
    gen = torch.Generator().manual_seed(args.seed)
    video = module.sample(batch, generator=gen, progress=lambda it: tqdm(it, desc="sampling", unit="step"))
    fake = to_uint8_frames(video)
    real = to_uint8_frames(batch["video"])
    audio = batch["audio"].float().numpy()
    boxes = batch["mouth_box"].numpy()
    scores = sync_scores(fake, boxes, audio)
    real_r = float(np.mean([synthsync(real[i], boxes[i].tolist(), audio[i])["r"] for i in range(len(real))]))
    clips = []
    for i in range(fake.shape[0]):
        path = out / f"sample_{i}.mp4"
        write_video(path, fake[i], fps=25, audio=audio[i])
        clips.append(str(path))
    # real clips on the top row, generated ones below: one video to judge identity and lip sync at once
    grid = np.concatenate([np.concatenate(list(real), axis=2), np.concatenate(list(fake), axis=2)], axis=1)
    comparison = out / "comparison.mp4"
    write_video(comparison, grid, fps=25, audio=audio[0])
    return {"synthsync_r": scores["r"], "synthsync_r_shuffled": scores["r_shuffled"], "synthsync_r_real": real_r,
            "clips": clips, "comparison": str(comparison)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    make_data(data, args)
    t_data = time.perf_counter() - started
    print(f"[2/4] training the tiny teacher for {args.steps} steps ({args.config})", flush=True)
    module, history, run_dir = train(data, out / "logs", args)
    t_train = time.perf_counter() - started - t_data
    print("[3/4] sampling held-out identities from their audio and reference frame", flush=True)
    result = sample_and_score(module, held_out_batch(data, args), out, args)
    n = len(history.losses)
    k = max(1, min(50, n // 5))
    summary = {
        "steps": n,
        "loss_start": history.window_mean(0, k),
        "loss_end": history.window_mean(n - k, n),
        "loss_window_steps": k,
        **result,
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("[4/4] summary")
    print(f"  training loss      {summary['loss_start']:.3f} (first {k} steps) -> {summary['loss_end']:.3f} "
          f"(last {k} of {n})")
    print(f"  SynthSync r        {summary['synthsync_r']:+.2f} with the true audio, "
          f"{summary['synthsync_r_shuffled']:+.2f} with shuffled audio (real videos: {real_r_fmt(summary)})")
    print(f"  clips (mp4+audio)  {out}/sample_*.mp4, real vs generated: {summary['comparison']}")
    print(f"  logs, checkpoint   {run_dir} (tensorboard --logdir {out / 'logs'})")
    print(f"  time               {summary['seconds']['total']:.0f} s (data {t_data:.0f} s, training {t_train:.0f} s)")
    return 0


def real_r_fmt(summary: dict) -> str:
    return f"{summary['synthsync_r_real']:+.2f}"


if __name__ == "__main__":
    sys.exit(main())
