"""The CPU path on SynthTalk, stage by stage: teacher -> ODE init -> Self-Forcing DMD student.

Each stage is one `lit-avatar fit` run (the same LightningCLI entry, the experiment YAML of the stage,
only data paths, step counts and folders overridden). A stage whose checkpoint exists with the same
settings is reused, so `make demo` and `make ablations` share their teacher and ODE init, and a second
run costs only what changed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = ROOT / "experiments" / "teacher" / "synthtalk_tiny.yaml"
ODE_CONFIG = ROOT / "experiments" / "distill" / "synthtalk_tiny_ode.yaml"
DMD_CONFIG = ROOT / "experiments" / "distill" / "synthtalk_tiny.yaml"


@dataclass
class Stage:
    """One training run.

    Args:
        name: folder name under the logs root (and TensorBoard run name).
        configs: stacked experiment YAMLs.
        steps: most optimizer steps (Trainer.max_steps).
        overrides: extra `--key=value` arguments.

    Stages train by step count only (never by wall-clock), so the same command gives the same model on
    any machine and under any load.
    """

    name: str
    configs: list[str]
    steps: int
    overrides: list[str] = field(default_factory=list)


def stage_checkpoint(logs: Path, name: str) -> Path:
    return Path(logs) / name / "version_0" / "checkpoints" / "last.ckpt"


def fit_stage(stage: Stage, data: Path, logs: Path, seed: int = 0, extra_callbacks: list[str] = (),
              quiet: bool = False) -> tuple[Path, Any]:
    """Run (or reuse) a stage; returns (last checkpoint, the CLI object or None when reused).

    With `quiet`, Lightning's batch bar and model summary are off and a step bar with ETA
    (lit_avatar.modules.step_progress.StepProgress) takes their place; it also records seconds per step.
    """
    from lit_avatar.lightning_cli import AvatarCLI

    ckpt = stage_checkpoint(logs, stage.name)
    stamp = ckpt.parent.parent / "stage.json"
    settings = {**asdict(stage), "data": str(data), "seed": seed}
    if ckpt.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"  reusing {stage.name}: {ckpt}", flush=True)
        return ckpt, None
    args = ["fit"]
    for config in stage.configs:
        args += ["--config", str(config)]
    args += [
        f"--seed_everything={seed}",
        f"--data.init_args.train_shards={data / 'train-*.tar'}",
        f"--data.init_args.val_shards={data / 'val-*.tar'}",
        f"--trainer.max_steps={stage.steps}",
        f"--trainer.val_check_interval={max(1, min(100, stage.steps))}",
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--trainer.logger.init_args.name={stage.name}",
        "--trainer.logger.init_args.version=0",
        *stage.overrides,
    ]
    if quiet:
        args += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                 "--trainer.callbacks+=" + json.dumps({"class_path": "lit_avatar.modules.step_progress.StepProgress",
                                                      "init_args": {"desc": stage.name}})]
    for callback in extra_callbacks:
        args.append(f"--trainer.callbacks+={callback}")
    # a stale run of other settings must not be mistaken for this one
    if ckpt.is_file():
        ckpt.unlink()
    cli = AvatarCLI(args=args)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=1))
    return ckpt, cli


def teacher_stage(steps: int, overrides: list[str] = ()) -> Stage:
    return Stage("teacher", [str(TEACHER_CONFIG)], steps, list(overrides))


def ode_stage(teacher_ckpt: Path, steps: int, overrides: list[str] = ()) -> Stage:
    return Stage("ode_init", [str(ODE_CONFIG)], steps, [f"--model.init_args.teacher_weights={teacher_ckpt}",
                                                         *overrides])


def dmd_stage(teacher_ckpt: Path, ode_ckpt: Path, steps: int, name: str = "student",
              ablation: str | None = None, overrides: list[str] = ()) -> Stage:
    configs = [str(DMD_CONFIG)]
    if ablation is not None:
        configs.append(str(ROOT / "experiments" / "ablations" / f"{ablation}.yaml"))
    return Stage(name, configs, steps, [f"--model.init_args.teacher_weights={teacher_ckpt}",
                                        f"--model.init_args.generator_weights={ode_ckpt}", *overrides])


def score_samples(frames, batch: dict) -> dict:
    """SynthSync (true vs shuffled audio) and appearance (eval.appearance) of uint8 frames [B,T,H,W,3]
    generated for `batch` (its real `video`, `ref`, `mouth_box` and `audio`)."""
    from eval.synthsync import batch_synthsync
    from lit_avatar.modules.sample_scores import appearance_of_batch

    sync = batch_synthsync(frames, batch["mouth_box"].numpy(), batch["audio"].float().numpy())
    return {"synthsync_r": sync["r"], "synthsync_r_shuffled": sync["r_shuffled"], **appearance_of_batch(frames, batch)}


def teacher_sampler(teacher_ckpt: Path, steps: int | None = None):
    """The TeacherSampler the teacher's checkpoint was trained with (its hyper-parameters: shift, guidance)."""
    import torch

    from lit_avatar.modules.teacher_sampler import TeacherSampler

    # mmap: only the hyper-parameters are read, not the weights load_generator already read
    checkpoint = torch.load(str(teacher_ckpt), map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    return TeacherSampler.from_hparams(hparams, steps=steps)


def _bar(desc: str):
    """A progress-bar wrapper (with ETA) for a step iterator, on stderr when it is a terminal."""
    from lit_avatar.quiet import progress_bar

    return lambda steps: progress_bar(steps, desc=desc, unit="step", leave=False)


def check_teacher(teacher_ckpt: Path, batch: dict, steps: int = 16, seed: int = 0) -> dict:
    """Sample the teacher on held-out clips and score them (the demo stops here when the teacher failed)."""
    import torch

    from lit_avatar.checkpoint import load_generator
    from lit_avatar.data.frames import to_uint8_frames
    from lit_avatar.modules.conditions import clip_inputs

    teacher = load_generator(teacher_ckpt)
    sampler = teacher_sampler(teacher_ckpt, steps)
    with torch.inference_mode():
        x0, conds = clip_inputs(batch, teacher.vae, teacher.audio_encoder)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        latents = sampler.latents(teacher.model, conds, noise, progress=_bar("teacher sampling"))
        video = teacher.vae.decode(latents).float().clamp(-1, 1)
    return score_samples(to_uint8_frames(video), batch)


def compare_student_teacher(student_ckpt: Path, teacher_ckpt: Path, batch: dict, teacher_steps: int = 16,
                            seed: int = 0, keep_frames: bool = False) -> dict:
    """SynthSync (true vs shuffled audio), appearance and seconds per generated frame of both, same clips.

    With keep_frames, the uint8 frames of both are returned too (keys student_frames, teacher_frames).
    The student runs the shared rollout (its PSB/MCI/URCR options from its checkpoint); the teacher runs its
    own sampler (TeacherSampler, settings from its checkpoint) over the whole clip. Both sides are timed over
    the same stages: denoising from noise to clean latents plus the VAE decode; the conditions (audio features,
    reference latent) are computed once beforehand and shared, untimed. Both run in this one call, so the
    speed ratio compares like with like on the same machine and load.
    """
    import time

    import torch

    from lit_avatar.checkpoint import load_generator
    from lit_avatar.data.frames import to_uint8_frames
    from lit_avatar.inference.clip_rollout import rollout_clip
    from lit_avatar.modules.conditions import clip_inputs

    student = load_generator(student_ckpt)
    teacher = load_generator(teacher_ckpt)
    sampler = teacher_sampler(teacher_ckpt, teacher_steps)
    frames = batch["video"].shape[0] * batch["video"].shape[2]
    with torch.inference_mode():
        x0, conds = clip_inputs(batch, student.vae, student.audio_encoder)
        start = time.perf_counter()
        latents, _ = rollout_clip(student.model, student.rollout_options, conds, tuple(x0.shape),
                                  generator=torch.Generator().manual_seed(seed))
        student_video = student.vae.decode(latents).float().clamp(-1, 1)
        student_s = time.perf_counter() - start
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        latents = sampler.latents(teacher.model, conds, noise, progress=_bar("teacher sampling"))
        teacher_video = teacher.vae.decode(latents).float().clamp(-1, 1)
        teacher_s = time.perf_counter() - start
    student_frames, teacher_frames = to_uint8_frames(student_video), to_uint8_frames(teacher_video)
    scores = {f"{who}_{k}": v for who, f in (("student", student_frames), ("teacher", teacher_frames))
              for k, v in score_samples(f, batch).items()}
    steps = student.rollout_options.psb.steps
    extra = {"student_frames": student_frames, "teacher_frames": teacher_frames} if keep_frames else {}
    return {**extra, **scores,
        "student_steps": f"{','.join(map(str, steps))} (PSB; later blocks {steps[-1]})",
        "teacher_steps": sampler.describe(),
        "timed_stages": "denoising + VAE decode on both sides (conditions computed once, shared, untimed)",
        "student_ms_per_frame": 1000 * student_s / frames, "teacher_ms_per_frame": 1000 * teacher_s / frames,
        "speedup": teacher_s / student_s, "frames": frames,
    }
