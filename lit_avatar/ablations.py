"""`make ablations`: distil every PSB/MCI/URCR variant with several seeds and compare them with intervals.

Variants, protocol (seeds, DMD steps, held-out clips, stream length, windows) and table columns come from
experiments/tables/ablations.yaml; this command only runs them:

1. the teacher and ODE init of `make demo` (reused when the demo ran with the same settings);
2. per seed and variant, Self-Forcing DMD with experiments/distill/synthtalk_tiny.yaml stacked with the
   variant's YAML (TensorBoard: <out>/tensorboard/<variant>_s<seed>, one run each, the same tags);
3. per run, the held-out SynthTalk recordings (fixed, the same for every run) streamed as one batch for
   `seconds` and scored by eval.stream_scores (appearance, credited SynthSync, first blocks, seams, drift);
4. per variant, means with 95% intervals over seeds and paired differences to the baseline
   (eval.stats) -> <out>/results/<variant>.json; drift curves (means over seeds) to TensorBoard
   (<out>/tensorboard/drift/<variant>, tags drift/<metric>) and <out>/drift.png; the table through
   eval.tables -> <out>/ablations.md.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from lit_avatar.command import CommandParser, Namespace, int_list

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "experiments" / "tables" / "ablations.yaml"


def _parser() -> CommandParser:
    p = CommandParser(prog="python -m lit_avatar.ablations", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablations", help="output root (TensorBoard runs, checkpoints, results)")
    p.add_argument("--base", default="runs/demo",
                   help="a `make demo` folder whose data, teacher and ODE init are reused (trained here if missing)")
    p.add_argument("--table", default=str(TABLE), help="variants, protocol and columns (YAML)")
    p.add_argument("--quick", action="store_true", help="the table's `quick` protocol (one seed, short streams)")
    p.add_argument("--variants", default=None, help="comma-separated subset of the table's variants")
    p.add_argument("--seeds", default=None, help="comma-separated DMD seeds (default: the protocol's)")
    p.add_argument("--steps", type=int, default=None, help="DMD steps per run (default: the protocol's)")
    p.add_argument("--clips", type=int, default=None, help="held-out clips streamed (default: the protocol's)")
    p.add_argument("--seconds", type=float, default=None, help="stream length in seconds (default: the protocol's)")
    p.add_argument("--window", type=float, default=None, help="drift window in seconds (default: the protocol's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--demo-args", default="",
                   help="extra `make demo` arguments for the shared data/teacher/ODE stages "
                   "(e.g. '--teacher-steps 20')")
    return p


def load_plan(args: Namespace) -> tuple[dict, dict]:
    """(table config, protocol with the command line's overrides), validated."""
    import yaml

    from lit_avatar.errors import UserError

    path = Path(args.table)
    if not path.is_file():
        raise UserError(f"--table {path}: file not found")
    cfg = yaml.safe_load(path.read_text())
    for key in ("variants", "baseline", "protocol", "columns"):
        if key not in cfg:
            raise UserError(f"--table {path}: missing key {key!r}")
    protocol = dict(cfg["quick" if args.quick else "protocol"])
    _check_baseline(cfg["baseline"], list(cfg["variants"]), path)
    if args.seeds:
        protocol["seeds"] = int_list(args.seeds, "--seeds", minimum=0)
    for key, value in (("dmd_steps", args.steps), ("clips", args.clips), ("seconds", args.seconds),
                       ("window_s", args.window)):
        if value is not None:
            protocol[key] = value
    if args.variants:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in chosen if v not in cfg["variants"]]
        if bad:
            raise UserError(f"--variants: unknown {bad}; expected some of {','.join(cfg['variants'])}")
        cfg["variants"] = {v: cfg["variants"][v] for v in chosen}
    if isinstance(cfg["baseline"], dict):  # pairs outside the chosen variants drop out (`--variants` may run one)
        cfg["baseline"] = {k: v for k, v in cfg["baseline"].items() if k in cfg["variants"] and v in cfg["variants"]}
    if protocol["dmd_steps"] < 1 or protocol["clips"] < 1 or protocol["seconds"] <= 0 or not protocol["seeds"]:
        raise UserError("--steps/--clips/--seconds/--seeds: expected positive values and at least one seed")
    return cfg, protocol


def _check_baseline(baseline, variants: list[str], path: Path) -> None:
    """`baseline` names one variant, or maps variants to their partners (tables of pairs)."""
    from lit_avatar.errors import UserError

    named = list(baseline.items()) if isinstance(baseline, dict) else [("baseline", baseline)]
    bad = [f"{k}: {v}" for k, v in named if (k != "baseline" and k not in variants) or v not in variants]
    if bad:
        raise UserError(f"--table {path}: baseline: {bad} are not variants; expected some of {','.join(variants)}")


def _base_stages(args: Namespace):
    """Data, teacher and ODE init of `make demo` (its settings, so a demo run is reused as is)."""
    from lit_avatar import demo, pipeline

    defaults = demo.build_parser().parse(["--out", args.base, *shlex.split(args.demo_args)])
    base = Path(args.base).resolve()
    data, logs = base / "data", base / "logs"
    info = demo.make_data(data, defaults)
    history = ["lit_avatar.modules.callbacks.LossHistory"]
    teacher, _ = pipeline.fit_stage(
        pipeline.teacher_stage(defaults.teacher_steps, [f"--data.init_args.batch_size={defaults.teacher_batch}"]),
        data, logs, defaults.seed, extra_callbacks=history, quiet=True)
    ode, _ = pipeline.fit_stage(
        pipeline.ode_stage(teacher, defaults.ode_steps, [f"--data.init_args.batch_size={defaults.ode_batch}"]),
        data, logs, defaults.seed, extra_callbacks=history, quiet=True)
    return data, teacher, ode, defaults, info


def held_out_streams(defaults: Namespace, info: dict, clips: int, seconds: float) -> dict:
    """The evaluation batch: `clips` real SynthTalk recordings of the held-out identities (fixed clip indices,
    so every variant and seed sees the same audio, references and ground truth)."""
    import numpy as np
    import torch

    from data_tools.synth import make_clip

    count = int(info.get("identities", max(2, defaults.clips // 4, defaults.val_identities + 1)))
    held_out = list(range(count - defaults.val_identities, count))
    made = [make_clip(defaults.seed, 3_000_000 + i, held_out[i % len(held_out)], seconds, 32) for i in range(clips)]

    def to_video(frames):  # uint8 -> [-1, 1]
        return torch.from_numpy(np.stack(frames)).float().div(127.5).sub(1)

    return {"video": to_video([c.frames for c in made]).permute(0, 4, 1, 2, 3),
            "ref": to_video([c.ref for c in made]).permute(0, 3, 1, 2),
            "audio": torch.from_numpy(np.stack([c.audio for c in made])).float(),
            "mouth_box": torch.tensor([c.box for c in made], dtype=torch.float32),
            "real_frames": np.stack([c.frames for c in made]), "ref_frames": np.stack([c.ref for c in made])}


def stream_and_score(ckpt: Path, streams: dict, seed: int, protocol: dict):
    """Roll the checkpoint's student over the whole batch of streams and score them (eval.stream_scores)."""
    import torch

    from eval.stream_scores import score_streams
    from lit_avatar.causal_grid import CausalGrid
    from lit_avatar.checkpoint import load_generator
    from lit_avatar.data.frames import to_uint8_frames
    from lit_avatar.inference.clip_rollout import rollout_clip
    from lit_avatar.modules.conditions import clip_inputs
    from lit_avatar.seeding import step_generator

    bundle = load_generator(ckpt)
    batch = {k: streams[k] for k in ("video", "ref", "audio", "mouth_box")}
    start = time.perf_counter()
    with torch.inference_mode():
        x0, conds = clip_inputs(batch, bundle.vae, bundle.audio_encoder)
        latents, _ = rollout_clip(bundle.model, bundle.rollout_options, conds, tuple(x0.shape),
                                  generator=step_generator(seed, 0, 1))
        frames = to_uint8_frames(bundle.vae.decode(latents).float().clamp(-1, 1))
    seconds = time.perf_counter() - start
    grid = CausalGrid(bundle.rollout_options.frames_per_block, int(getattr(bundle.vae, "temporal_factor", 1)))
    scalars, curves = score_streams(frames, streams["real_frames"], streams["ref_frames"],
                                    streams["mouth_box"].numpy(), streams["audio"].numpy(), grid,
                                    window_s=protocol["window_s"], first_seconds=protocol["first_seconds"])
    scalars["ms_per_frame"] = 1000 * seconds / (frames.shape[0] * frames.shape[1])
    horizon_s = grid.horizon_seconds(bundle.rollout_options.urcr.max_frames)
    return scalars, curves, horizon_s


def _baseline_of(baseline: str | dict[str, str], variant: str) -> str | None:
    return baseline.get(variant) if isinstance(baseline, dict) else baseline


def write_outputs(out: Path, cfg: dict, per_seed: dict, curves: dict, horizon_s: float, command: str) -> str:
    """Results JSON per variant (eval.stats), drift curves to TensorBoard and PNG, the table (eval.tables)."""
    import yaml

    from eval.drift import log_tensorboard, plot_overlay
    from eval.stats import summarize
    from eval.stream_scores import mean_curve
    from eval.tables import build_table
    from lit_avatar.data.atomic import write_json_atomic

    aggregates = summarize(per_seed, cfg["baseline"])
    results_dir = out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    rows, mean_curves = [], {}
    for variant, agg in aggregates.items():
        mean_curves[variant] = {k: mean_curve(cs) for k, cs in curves[variant].items()}
        record = {"method": variant, "aggregate": agg, "per_seed": per_seed[variant],
                  "baseline": _baseline_of(cfg["baseline"], variant),
                  "rope_horizon_s": horizon_s, "command": command,
                  "drift": {k: c.to_dict() for k, c in mean_curves[variant].items()}}
        path = results_dir / f"{variant}.json"
        write_json_atomic(path, record)
        # one TensorBoard run per variant, the same tags in each, so the curves overlay
        log_tensorboard(mean_curves[variant], out / "tensorboard" / "drift" / variant, prefix="drift")
        name = next((r["name"] for r in cfg.get("rows", []) if r["name"].split()[0] == variant), variant)
        rows.append({"name": name, "results": str(path)})
    plot_overlay(mean_curves, out / "drift.png", title="drift per window (mean over seeds)", marker_s=horizon_s,
                 marker_label="trained RoPE horizon")
    table_cfg = {"title": cfg.get("title", ""), "columns": cfg["columns"], "rows": rows,
                 "interval_suffix": "_ci95", "differs_suffix": "_differs"}
    config_path = out / "ablations_table.yaml"
    config_path.write_text(yaml.safe_dump(table_cfg, sort_keys=False))
    return build_table(str(config_path), str(out / "ablations.md"), command=command)


def main(argv: list[str] | None = None) -> int:
    from lit_avatar import pipeline
    from lit_avatar.runs import open_run_folder

    args = _parser().parse(argv)
    cfg, protocol = load_plan(args)
    out = open_run_folder(args.out, args.threads, "ablations.log")
    command = "python -m lit_avatar.ablations " + shlex.join(argv if argv is not None else sys.argv[1:])
    data, teacher, ode, defaults, info = _base_stages(args)
    streams = held_out_streams(defaults, info, protocol["clips"], protocol["seconds"])
    runs = [(seed, variant) for seed in protocol["seeds"] for variant in cfg["variants"]]
    per_seed = {v: {} for v in cfg["variants"]}
    curves = {v: {} for v in cfg["variants"]}
    horizon_s, started = 0.0, time.perf_counter()
    for done, (seed, variant) in enumerate(runs):
        print(f"== [{done + 1}/{len(runs)}] {variant}, seed {seed}: {protocol['dmd_steps']} DMD steps, then "
              f"{protocol['clips']} held-out streams of {protocol['seconds']:g} s", flush=True)
        stage = pipeline.dmd_stage(teacher, ode, protocol["dmd_steps"], name=f"{variant}_s{seed}", ablation=variant,
                                   overrides=[f"--data.init_args.batch_size={defaults.dmd_batch}"])
        ckpt, _ = pipeline.fit_stage(stage, data, out / "tensorboard", seed, quiet=True)
        scalars, run_curves, horizon_s = stream_and_score(ckpt, streams, seed, protocol)
        for key, value in scalars.items():
            per_seed[variant].setdefault(key, []).append(value)
        for key, curve in run_curves.items():
            curves[variant].setdefault(key, []).append(curve)
        elapsed = time.perf_counter() - started
        print(f"   r {scalars['synthsync_r']:+.3f} (credited {scalars['synthsync_r_credited']:+.3f}), appearance SSIM "
              f"{scalars['ssim_outside_mouth']:.3f}, {scalars['ms_per_frame']:.1f} ms/frame; about "
              f"{elapsed / (done + 1) * (len(runs) - done - 1) / 60:.0f} min left", flush=True)
    print(write_outputs(out, cfg, per_seed, curves, horizon_s, command))
    print(f"results: {out / 'results'}, drift: {out / 'drift.png'} and {out / 'tensorboard'} (make tensorboard)")
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
