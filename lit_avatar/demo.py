"""`make demo`: the whole CPU path on SynthTalk, from data to a 60-second streamed video.

    python -m lit_avatar.demo --out runs/demo

1. writes a SynthTalk set (`data_tools synth`), with identities held out for validation;
2. trains the bidirectional teacher (experiments/teacher/synthtalk_tiny.yaml);
3. initialises the causal student on teacher ODE trajectories (experiments/distill/synthtalk_tiny_ode.yaml);
4. distils it with Self-Forcing DMD through the shared rollout (experiments/distill/synthtalk_tiny.yaml);
   every stage runs through the same LightningCLI entry as `lit-avatar fit`, with only data paths,
   step counts, batch sizes and folders overridden, and is reused by a later run with the same settings;
5. compares student and teacher on held-out identities: appearance (SSIM outside the mouth box against
   the real clip, eval.appearance), SynthSync r with the true and with shuffled audio, and seconds per
   frame of each, measured in the same run over the same stages (denoising + VAE decode; the teacher
   through its one sampler, with the shift and guidance its checkpoint stores);
6. streams a 60-second video of a held-out identity from its audio with `lit-avatar generate` (the
   student, PSB + MCI + URCR), and prints a summary: losses, appearance, SynthSync, speed, files.

Every stage trains by step count with a fixed seed (never by wall-clock), so the same command gives the
same figures on any machine; a busy machine only takes longer. Each stage shows a step bar with its ETA;
library chatter (Lightning's tips, warnings) goes to <out>/demo.log, not the terminal.

The summary checks its own result: the teacher is checked right after training (no point distilling a
teacher that draws noise), the student at the end. A model fails when its appearance SSIM is below 0.5
or its SynthSync r is not at least 0.2 above the shuffled-audio r (eval.appearance states why); then the
demo prints one plain line saying so and exits with code 1.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lit_avatar.command import CommandParser, Namespace
from lit_avatar.errors import UserError, output_folder

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m lit_avatar.demo", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder (data, logs, clips, summary.json)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a machine shared with other jobs)")
    p.add_argument("--clips", type=int, default=240, help="SynthTalk clips to generate (train + held out)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each SynthTalk clip")
    p.add_argument("--val-identities", type=int, default=4, help="identities held out for sampling")
    p.add_argument("--teacher-steps", type=int, default=500, help="teacher optimizer steps")
    p.add_argument("--teacher-batch", type=int, default=8, help="teacher clips per step (the YAML has 16)")
    p.add_argument("--ode-steps", type=int, default=100, help="ODE-init steps")
    p.add_argument("--ode-batch", type=int, default=4, help="ODE-init clips per step (the YAML has 8)")
    p.add_argument("--dmd-steps", type=int, default=150, help="DMD steps (critic updates; 1 in 5 also updates "
                   "the generator)")
    p.add_argument("--dmd-batch", type=int, default=4, help="DMD clips per step (the YAML has 8)")
    p.add_argument("--teacher-sample-steps", type=int, default=16, help="Euler steps of the teacher in the checks "
                   "and the comparison")
    p.add_argument("--sample-frames", type=int, default=50, help="frames per compared clip (25 fps)")
    p.add_argument("--num-samples", type=int, default=4, help="held-out clips compared")
    p.add_argument("--stream-seconds", type=float, default=60.0, help="length of the streamed video")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling noise")
    p.add_argument("--keep-going", action="store_true",
                   help="run every stage even when the teacher check fails (the exit code is still 1)")
    return p


def make_data(folder: Path, args: Namespace) -> dict:
    """Write the SynthTalk set once; a later run with the same folder reuses it."""
    from data_tools.synth import write_synthtalk

    manifest = folder / "manifest.json"
    wanted = {"clips": args.clips, "seconds": args.seconds, "seed": args.seed, "val_identities": args.val_identities}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("demo_args") == wanted:
            return old
    print(f"[1/6] writing SynthTalk: {args.clips} clips of {args.seconds:g} s ...", flush=True)
    # no captions: the demo trains without text, on shards byte-identical to those before captions existed
    info = write_synthtalk(folder, clips=args.clips, seconds=args.seconds, shards=4, size=32, seed=args.seed,
                           val_identities=args.val_identities, captions=False)
    info["demo_args"] = wanted
    manifest.write_text(json.dumps(info, indent=1))
    return info


def held_out_batch(data: Path, args: Namespace) -> dict:
    """Clips of held-out identities: their audio and reference drive the samples."""
    from lit_avatar.data.datamodule import AvatarDataModule

    dm = AvatarDataModule(train_shards=None, val_shards=str(data / "val-*.tar"), batch_size=args.num_samples,
                          num_workers=0, clip_frames=args.sample_frames, size=32, seed=args.seed)
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def write_clips(result: dict, batch: dict, out: Path) -> dict:
    """Held-out clips as mp4 with audio: teacher and student, and real/teacher/student stacked in one video."""
    import numpy as np

    from lit_avatar.data.frames import to_uint8_frames
    from lit_avatar.data.media import write_video

    real = to_uint8_frames(batch["video"])
    audio = batch["audio"].float().numpy()
    paths = {}
    for name in ("teacher", "student"):
        frames = result.pop(f"{name}_frames")
        paths[name] = []
        for i in range(frames.shape[0]):
            path = out / f"{name}_{i}.mp4"
            write_video(path, frames[i], fps=25, audio=audio[i])
            paths[name].append(str(path))
        result[f"{name}_grid"] = np.concatenate(list(frames), axis=2)
    rows = [np.concatenate(list(real), axis=2), result.pop("teacher_grid"), result.pop("student_grid")]
    comparison = out / "comparison.mp4"
    stacked = np.concatenate(rows, axis=1)  # [T, 3 rows of H, clips x W, 3]
    write_video(comparison, stacked, fps=25, audio=audio[0])
    # a still for the README: 8 frames evenly spaced; rows real, teacher, student; columns clips x frames
    from PIL import Image

    from lit_avatar.modules.sample_logging import frame_grid

    grid = out / "frame_grid.png"
    Image.fromarray(frame_grid(stacked[None], max_frames=8).transpose(1, 2, 0)).resize(
        (stacked.shape[2] * 8 * 2, stacked.shape[1] * 2), Image.NEAREST).save(grid)
    return {"clips": paths, "comparison": str(comparison), "frame_grid": str(grid)}


def stream_long_video(student_ckpt: Path, out: Path, args: Namespace, identities: int) -> dict:
    """A long recording of a held-out identity, streamed from its audio by `lit-avatar generate`."""
    from PIL import Image

    from data_tools.synth import make_clip
    from eval.synthsync import synthsync
    from lit_avatar.data.media import encode_audio, read_video
    from lit_avatar.inference.generate_cli import main as generate

    clip = make_clip(args.seed, 10**6, identities - 1, args.stream_seconds, 32)
    wav, ref, video = out / "stream_audio.wav", out / "stream_ref.png", out / f"stream_{args.stream_seconds:g}s.mp4"
    wav.write_bytes(encode_audio(clip.audio, 16000, codec="wav"))
    Image.fromarray(clip.ref).save(ref)
    box = ",".join(f"{v:.4f}" for v in clip.box)
    argv = ["--ckpt", str(student_ckpt), "--audio", str(wav), "--ref", str(ref), "--out", str(video),
            "--seed", str(args.seed), "--mouth-box", box]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    generate(argv)
    frames, _ = read_video(video)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    true = synthsync(frames, clip.box, clip.audio)["r"]
    shuffled = synthsync(frames, clip.box, clip.audio[::-1].copy())["r"]
    real = synthsync(clip.frames, clip.box, clip.audio)["r"]
    from eval.appearance import appearance

    looks = appearance(frames, clip.frames, clip.box, clip.ref)
    looks.pop("ref_ssim_per_frame")
    return {"video": str(video), "frames": int(frames.shape[0]), "synthsync_r": true, **looks,
            "synthsync_r_reversed_audio": shuffled, "synthsync_r_real": real, "generate": sidecar.get("latency")}


def _loss_window(run_dir: Path, first: bool, k: int = 50) -> float | None:
    path = run_dir / "loss_history.json"
    if not path.is_file():
        return None
    # the history stores a NaN loss as null (strict JSON)
    losses = [float("nan") if v is None else v for v in json.loads(path.read_text())["losses"]]
    part = losses[:k] if first else losses[-k:]
    return sum(part) / len(part) if part else None


def _validate(args: Namespace) -> None:

    for name in ("teacher_steps", "teacher_batch", "ode_steps", "ode_batch", "dmd_steps", "dmd_batch",
                 "teacher_sample_steps", "sample_frames", "num_samples", "clips"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if args.stream_seconds <= 0 or args.seconds <= 0:
        raise UserError("--seconds and --stream-seconds: expected a positive length in seconds")


def _verdict_line(who: str, scores: dict) -> tuple[str, object]:
    from eval.appearance import judge

    v = judge(scores["ssim_outside_mouth"], scores["synthsync_r"], scores["synthsync_r_shuffled"],
              who=f"the {who}'s samples")
    return v.reason, v


def _step_seconds(ckpt: Path) -> float | None:
    path = ckpt.parents[1] / "step_times.json"
    return json.loads(path.read_text())["median_s"] if path.is_file() else None


def _fail(out: Path, log_file: Path, line: str, summary: dict) -> int:
    summary["failed"] = line
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"demo failed: {line} (details: {out / 'summary.json'}, library log: {log_file})", flush=True)
    return 1


def _teacher_summary(teacher: Path, teacher_check: dict) -> dict:
    from eval.appearance import APPEARANCE_PASS_SSIM, SYNC_PASS_MARGIN

    print(f"      teacher check: appearance SSIM {teacher_check['ssim_outside_mouth']:.2f}, SynthSync r "
          f"{teacher_check['synthsync_r']:+.2f} (shuffled {teacher_check['synthsync_r_shuffled']:+.2f})", flush=True)
    return {"teacher_check": teacher_check, "teacher_loss_first50": _loss_window(teacher.parents[1], True),
            "teacher_loss_last50": _loss_window(teacher.parents[1], False),
            "thresholds": {"appearance_ssim": APPEARANCE_PASS_SSIM,
                           "synthsync_margin_over_shuffled": SYNC_PASS_MARGIN}}


def _finish_summary(summary: dict, ckpts: dict[str, Path], compare: dict, files: dict, stream: dict,
                    timings: dict) -> dict:
    """Adds the distillation results to `summary`; returns each model's (failure reason, verdict)."""
    summary.update({
        "ode_loss_first50": _loss_window(ckpts["ode_init"].parents[1], True),
        "ode_loss_last50": _loss_window(ckpts["ode_init"].parents[1], False),
        **compare, **files, "stream": stream,
        "checkpoints": {who: str(path) for who, path in ckpts.items()},
        "seconds_per_step": {"teacher": _step_seconds(ckpts["teacher"]), "ode_init": _step_seconds(ckpts["ode_init"]),
                             "dmd": _step_seconds(ckpts["student"])},
        "seconds": timings,
    })
    verdicts = {who: _verdict_line(who, {k[len(who) + 1:]: v for k, v in compare.items() if k.startswith(who + "_")})
                for who in ("teacher", "student")}
    for who, (_, v) in verdicts.items():
        summary[f"{who}_synthsync_r_credited"] = v.credited_r
    return verdicts


def _print_summary(summary: dict, args: Namespace, out: Path, logs: Path, log_file: Path) -> None:
    compare, stream = summary, summary["stream"]
    print("summary")
    if summary["teacher_loss_first50"] is not None:
        print(f"  teacher loss       {summary['teacher_loss_first50']:.3f} (first 50 steps) -> "
              f"{summary['teacher_loss_last50']:.3f} (last 50)")
    print(f"  appearance SSIM    teacher {compare['teacher_ssim_outside_mouth']:.2f}, student "
          f"{compare['student_ssim_outside_mouth']:.2f} (outside the mouth box, against the real clips; pass >= 0.5, "
          f"noise ~0.01)")
    print(f"  SynthSync r        teacher {compare['teacher_synthsync_r']:+.2f} (shuffled audio "
          f"{compare['teacher_synthsync_r_shuffled']:+.2f}), student {compare['student_synthsync_r']:+.2f} "
          f"(shuffled {compare['student_synthsync_r_shuffled']:+.2f}) on {args.num_samples} held-out clips")
    print(f"  speed per frame    teacher {compare['teacher_ms_per_frame']:.1f} ms ({compare['teacher_steps']}), "
          f"student {compare['student_ms_per_frame']:.1f} ms: {compare['speedup']:.1f}x (timed: "
          f"{compare['timed_stages']})")
    print(f"  long stream        {stream['video']} ({stream['frames']} frames), SynthSync r "
          f"{stream['synthsync_r']:+.2f} (reversed audio {stream['synthsync_r_reversed_audio']:+.2f}, real video "
          f"{stream['synthsync_r_real']:+.2f}), appearance SSIM {stream['ssim_outside_mouth']:.2f}")
    print(f"  clips (mp4+audio)  {out}/teacher_*.mp4, {out}/student_*.mp4; real/teacher/student: "
          f"{summary['comparison']}, {summary['frame_grid']}")
    print(f"  logs, checkpoints  {logs} (make tensorboard, or tensorboard --logdir {logs}); library log {log_file}")
    print(f"  time               {summary['seconds']}")


def main(argv: list[str] | None = None) -> int:
    from lit_avatar import pipeline
    from lit_avatar.runs import open_run_folder

    args = build_parser().parse(argv)
    output_folder(args.out, "--out")
    _validate(args)
    started = time.perf_counter()
    out = open_run_folder(args.out, args.threads, "demo.log")
    data, logs = out / "data", out / "logs"
    log_file = out / "demo.log"
    timings = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    history = ["lit_avatar.modules.callbacks.LossHistory"]
    t0 = time.perf_counter()
    info = make_data(data, args)
    lap("data", t0)
    print(f"[2/6] teacher: {args.teacher_steps} steps of {args.teacher_batch} clips", flush=True)
    t0 = time.perf_counter()
    teacher, _ = pipeline.fit_stage(
        pipeline.teacher_stage(args.teacher_steps, [f"--data.init_args.batch_size={args.teacher_batch}"]),
        data, logs, args.seed, extra_callbacks=history, quiet=True)
    batch = held_out_batch(data, args)
    teacher_check = pipeline.check_teacher(teacher, batch, args.teacher_sample_steps, args.seed)
    lap("teacher", t0)
    summary = _teacher_summary(teacher, teacher_check)
    reason, _ = _verdict_line("teacher", teacher_check)
    if reason and not args.keep_going:
        summary["seconds"] = timings
        return _fail(out, log_file, reason + f" after {args.teacher_steps} teacher steps; distillation skipped",
                     summary)
    print(f"[3/6] ODE init of the causal student: {args.ode_steps} steps of {args.ode_batch} clips", flush=True)
    t0 = time.perf_counter()
    ode, _ = pipeline.fit_stage(
        pipeline.ode_stage(teacher, args.ode_steps, [f"--data.init_args.batch_size={args.ode_batch}"]),
        data, logs, args.seed, extra_callbacks=history, quiet=True)
    lap("ode_init", t0)
    print(f"[4/6] Self-Forcing DMD: {args.dmd_steps} steps of {args.dmd_batch} clips", flush=True)
    t0 = time.perf_counter()
    student, _ = pipeline.fit_stage(
        pipeline.dmd_stage(teacher, ode, args.dmd_steps, overrides=[f"--data.init_args.batch_size={args.dmd_batch}"]),
        data, logs, args.seed, quiet=True)
    lap("dmd", t0)
    print("[5/6] student vs teacher on held-out identities (same clips, timed in one run)", flush=True)
    t0 = time.perf_counter()
    compare = pipeline.compare_student_teacher(student, teacher, batch, teacher_steps=args.teacher_sample_steps,
                                               seed=args.seed, keep_frames=True)
    files = write_clips(compare, batch, out)
    lap("compare", t0)
    print(f"[6/6] streaming {args.stream_seconds:g} s of a held-out identity with `lit-avatar generate`", flush=True)
    t0 = time.perf_counter()
    stream = stream_long_video(student, out, args, int(info["identities"]) if "identities" in info else 60)
    lap("stream", t0)
    timings["total"] = round(time.perf_counter() - started, 1)
    verdicts = _finish_summary(summary, {"teacher": teacher, "ode_init": ode, "student": student}, compare, files,
                               stream, timings)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _print_summary(summary, args, out, logs, log_file)
    for reason, _ in verdicts.values():
        if reason:
            return _fail(out, log_file, reason, summary)
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
