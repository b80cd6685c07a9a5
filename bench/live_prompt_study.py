"""`python -m bench.live_prompt_study`: does a streaming STUDENT follow a prompt changed live?

1. distils the caption-trained teacher (lit_avatar.caption_study) into a causal student the demo's way:
   ODE init (experiments/distill/synthtalk_tiny_ode.yaml) then Self-Forcing DMD (synthtalk_tiny.yaml), both
   with the teacher's text encoder, so captions reach the student, and text guidance on the teacher side;
2. streams held-out clips (the caption study's held-out identities, its eval_clips) with AvatarStreamer: one
   stream starts on the clip's true caption and changes it at block --change-block (set_prompt) to a caption
   naming another colour of a region (caption_study.other_name); the control is the same stream (same seed,
   audio, reference) that never changes; with the reference image and without it (the null reference: a
   zero reference latent, as the caption study samples "without");
3. scores each block with eval.caption_score (0 = the clip's true colour, 1 = the colour the other caption
   names); the response per block is changed - control (paired); before the change it must be exactly 0 (the
   frames are compared bit for bit). The seam: mean |frame t - frame t-1| across the change's seam vs across
   the ordinary block seams, changed vs control. JSON on stdout and in <out>/results.json.

    python -m bench.live_prompt_study --out runs/live_prompt --threads 2
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from lit_avatar.command import CommandParser, Namespace, int_list

CAPTIONS = Path("/work/wt/captions/runs/captions")


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m bench.live_prompt_study", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(CAPTIONS / "logs/captions/version_0/checkpoints/last.ckpt"),
                   help="the caption-trained teacher checkpoint (its text encoder is in its record)")
    p.add_argument("--data", default=str(CAPTIONS / "data"), help="its SynthTalk set with captions")
    p.add_argument("--out", default="runs/live_prompt", help="output folder (logs, prompt cache, results.json)")
    p.add_argument("--ode-steps", type=int, default=100, help="ODE-init steps (the demo's)")
    p.add_argument("--dmd-steps", type=int, default=150, help="DMD steps (the demo's)")
    p.add_argument("--batch", type=int, default=4, help="clips per ODE and DMD step (the demo's)")
    p.add_argument("--frames", type=int, default=8, help="video frames per training clip (the YAMLs')")
    p.add_argument("--text-guidance", type=float, default=6.0,
                   help="teacher text CFG scale: ODE text_guidance, DMD text_guidance_scale = this - 1")
    p.add_argument("--val-identities", type=int, default=16, help="held-out identities of the data set")
    p.add_argument("--eval-clips", type=int, default=12, help="held-out clips streamed")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated stream noise seeds")
    p.add_argument("--blocks", type=int, default=10, help="blocks per stream")
    p.add_argument("--change-block", type=int, default=5,
                   help="the block from which the other caption holds (5: not a URCR reset block of the demo's "
                        "rollout, whose resets fall on blocks 4, 7, 10, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data set and of training")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def _validate(args: Namespace) -> None:
    from lit_avatar.errors import UserError

    for name in ("ode_steps", "dmd_steps", "batch", "frames", "eval_clips", "blocks"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if not 1 <= args.change_block < args.blocks:
        raise UserError(f"--change-block {args.change_block}: expected 1 <= it < --blocks ({args.blocks})")
    if args.text_guidance < 1:
        raise UserError(f"--text-guidance {args.text_guidance}: expected >= 1")
    if not Path(args.teacher).is_file():
        raise UserError(f"--teacher {args.teacher}: no such checkpoint")
    if not (Path(args.data) / "manifest.json").is_file():
        raise UserError(f"--data {args.data}: expected a SynthTalk folder with manifest.json")
    int_list(args.seeds, "--seeds", minimum=0)


def text_encoder_override(data: Path, cache: Path) -> str:
    """The stages' `text_encoder` (the data set's, 16 tokens as the caption teacher's), as one override."""
    from data_tools.synth import TEXT_ENCODER

    spec = {"class_path": "lit_avatar.prompts.encoder.PromptEncoder",
            "init_args": {"path": str(data / TEXT_ENCODER), "max_length": 16, "cache_dir": str(cache)}}
    return "--model.init_args.text_encoder=" + json.dumps(spec)


def train_student(args: Namespace, out: Path) -> Path:
    """ODE init then DMD from the caption teacher, with captions; each stage reused when already there."""
    from lit_avatar import pipeline

    data, teacher = Path(args.data).resolve(), Path(args.teacher).resolve()
    common = [f"--data.init_args.batch_size={args.batch}", f"--data.init_args.clip_frames={args.frames}",
              text_encoder_override(data, out / "prompt_cache")]
    print(f"== ODE init: {args.ode_steps} steps of {args.batch} clips, text guidance {args.text_guidance:g}",
          flush=True)
    ode, _ = pipeline.fit_stage(pipeline.ode_stage(teacher, args.ode_steps, [
        *common, f"--model.init_args.text_guidance={args.text_guidance}"]), data, out / "logs", args.seed,
        quiet=True)
    print(f"== DMD: {args.dmd_steps} steps of {args.batch} clips", flush=True)
    student, _ = pipeline.fit_stage(pipeline.dmd_stage(teacher, ode, args.dmd_steps, overrides=[
        *common, f"--model.init_args.text_guidance_scale={args.text_guidance - 1}"]), data, out / "logs",
        args.seed, quiet=True)
    return student


def stream_frames(grid, blocks: int) -> int:
    """Video frames of `blocks` blocks on the causal grid."""
    start, count = grid.block_span(blocks - 1)
    return start + count


def held_out_clips(args: Namespace, frames: int) -> list[dict]:
    """The caption study's held-out clips (caption_study.eval_clips: true caption, one other-colour caption per
    scored region, masks and colours) at the stream's length."""
    from types import SimpleNamespace

    from lit_avatar.caption_study import eval_clips, name_colours

    count = int(json.loads((Path(args.data) / "manifest.json").read_text())["identities"])
    meanings = name_colours(args.seed, range(count - args.val_identities))
    study = SimpleNamespace(seed=args.seed, val_identities=args.val_identities, eval_clips=args.eval_clips,
                            frames=frames)
    return eval_clips(study, count, meanings)


def stream(bundle, clip, texts: list, change_block: int, seed: int, with_ref: bool) -> tuple[np.ndarray, list]:
    """uint8 frames [T, H, W, 3] of one live stream and the blocks where URCR reset its cache: texts[0] from
    the start, texts[1] (when given) set with set_prompt as soon as `change_block` blocks are out, so it holds
    from that block on. The audio arrives one frame (640 samples) at a time, as a live client sends it."""
    import torch

    from lit_avatar.inference.streamer import AvatarStreamer

    ref = clip.ref if with_ref else torch.zeros(3, *clip.ref.shape[:2])  # zeros: the zero (null) ref latent
    streamer = AvatarStreamer(bundle.model, bundle.vae, bundle.audio_encoder, bundle.rollout_options, ref,
                              text=texts[0], seed=seed)
    parts, pending = [], len(texts) > 1
    for start in range(0, len(clip.audio), 640):
        if pending and streamer.blocks_done == change_block:
            streamer.set_prompt(texts[1])
            pending = False
        parts.append(streamer.push_audio(clip.audio[start:start + 640]))
    parts.append(streamer.flush())
    changed = [r["block"] for r in streamer.latency if r["prompt_changed"]]
    if len(texts) > 1 and changed != [change_block]:
        raise RuntimeError(f"the prompt changed at blocks {changed}, expected [{change_block}]")
    return np.concatenate(parts), [r["block"] for r in streamer.latency if r["reset"]]


def seam_steps(frames: np.ndarray, grid) -> np.ndarray:
    """Mean |frame t - frame t-1| at every block seam t (grid.seams), in seam order."""
    from eval.stream_scores import frame_steps

    return frame_steps(frames[None])[np.asarray(grid.seams(len(frames)), dtype=int) - 1]


def score_stream(changed: np.ndarray, control: np.ndarray, grid, info: dict, change_block: int) -> dict:
    """Per block caption_score of the changed and the control stream and their difference; the largest pixel
    difference before the change; the frame step across the change's seam and across the other seams."""
    from eval.caption_score import caption_score

    spans = [grid.block_span(b) for b in range(grid.blocks_for(len(changed)))]
    per_block = [caption_score(f[s:s + n], info["mask"], info["true"], info["named"])
                 for f in (changed, control) for s, n in spans]
    changed_scores, control_scores = per_block[:len(spans)], per_block[len(spans):]
    response = [a - b for a, b in zip(changed_scores, control_scores)]
    first = spans[change_block][0]
    seams_changed, seams_control = seam_steps(changed, grid), seam_steps(control, grid)
    at = change_block - 1  # seams start at block 1
    others = [i for i in range(len(seams_changed)) if i != at]
    return {"response_per_block": response, "response_after": float(np.mean(response[change_block:])),
            "response_before": float(np.mean(response[:change_block])),
            "max_abs_before": int(np.abs(changed[:first].astype(int) - control[:first].astype(int)).max()),
            "score_control_after": float(np.mean(control_scores[change_block:])),
            "seam_change_changed": float(seams_changed[at]), "seam_change_control": float(seams_control[at]),
            "seam_other_changed": float(seams_changed[others].mean()),
            "seam_other_control": float(seams_control[others].mean())}


def evaluate(student: Path, args: Namespace, cache: Path) -> list[dict]:
    """Stream every held-out clip per seed and reference setting: the control (true caption throughout) and,
    per scored region, the stream changed to the caption naming that region's other colour; one record each."""
    import torch

    from lit_avatar.causal_grid import CausalGrid
    from lit_avatar.checkpoint import load_generator
    from lit_avatar.prompts import PromptEncoder

    bundle = load_generator(str(student))
    if bundle.text_encoder is None:
        raise RuntimeError(f"{student}: the student has no text encoder in its record")
    recorded = bundle.text_encoder  # the same encoder, its cache in the run folder
    encoder = PromptEncoder(recorded.path, recorded.max_length, recorded.dtype, cache_dir=str(cache))
    grid = CausalGrid(bundle.rollout_options.frames_per_block, int(bundle.vae.temporal_factor))
    clips = held_out_clips(args, stream_frames(grid, args.blocks))
    records = []
    for i, item in enumerate(clips):
        with torch.inference_mode():
            texts = encoder(item["captions"])  # [true, other skin, other background]
        for seed in int_list(args.seeds, "--seeds", minimum=0):
            for with_ref in (False, True):
                control, resets = stream(bundle, item["clip"], [texts[:1]], args.change_block, seed, with_ref)
                for j, (region, info) in enumerate(item["regions"].items()):
                    changed, _ = stream(bundle, item["clip"], [texts[:1], texts[j + 1:j + 2]], args.change_block,
                                     seed, with_ref)
                    records.append({"clip": i, "seed": seed, "reference": with_ref, "region": region, "resets": resets,
                                    "true_name": info["true_name"], "other_name": info["other_name"],
                                    **score_stream(changed, control, grid, info, args.change_block)})
        print(f"   clip {i + 1}/{len(clips)} streamed", flush=True)
    return records


def _interval(values) -> dict:
    from eval.stats import mean_ci

    interval = mean_ci(list(values))
    return {"mean": interval.mean, "ci95": [interval.low, interval.high]}


def summarize(records: list[dict]) -> list[dict]:
    """Per reference setting and region: the response after the change (mean, 95% CI over clips x seeds) and
    per block, the largest pixel difference before it, and the seam steps (change seam minus ordinary seams,
    changed and control, and changed - control at the change seam, paired)."""
    rows = []
    for with_ref in (False, True):
        for region in sorted({r["region"] for r in records}):
            chosen = [r for r in records if r["reference"] == with_ref and r["region"] == region]
            if not chosen:
                continue
            blocks = np.array([r["response_per_block"] for r in chosen])
            rows.append({
                "reference": with_ref, "region": region, "n": len(chosen),
                "response_after": _interval(r["response_after"] for r in chosen),
                "response_before": _interval(r["response_before"] for r in chosen),
                "response_per_block_mean": blocks.mean(axis=0).tolist(),
                "max_abs_pixel_difference_before": max(r["max_abs_before"] for r in chosen),
                "score_control_after": _interval(r["score_control_after"] for r in chosen),
                "seam_change_minus_other_changed": _interval(r["seam_change_changed"] - r["seam_other_changed"]
                                                             for r in chosen),
                "seam_change_minus_other_control": _interval(r["seam_change_control"] - r["seam_other_control"]
                                                             for r in chosen),
                "seam_change_changed_minus_control": _interval(r["seam_change_changed"] - r["seam_change_control"]
                                                               for r in chosen),
                "seam_change_changed": float(np.mean([r["seam_change_changed"] for r in chosen])),
                "seam_change_control": float(np.mean([r["seam_change_control"] for r in chosen])),
                "seam_other_changed": float(np.mean([r["seam_other_changed"] for r in chosen]))})
    return rows


def main(argv: list[str] | None = None) -> int:
    from lit_avatar.data.atomic import write_json_atomic
    from lit_avatar.errors import output_folder
    from lit_avatar.runs import open_run_folder

    args = build_parser().parse(argv)
    output_folder(args.out, "--out")
    _validate(args)
    out = open_run_folder(args.out, args.threads, "live_prompt_study.log")
    command = "python -m bench.live_prompt_study " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    student = train_student(args, out)
    trained = time.perf_counter()
    records = evaluate(student, args, out / "prompt_cache")
    resets = sorted({b for r in records for b in r["resets"]})
    result = {"command": command, "student": str(student), "change_block": args.change_block,
              "urcr_reset_blocks": resets, "rows": summarize(records), "records": records,
              "train_seconds": round(trained - started, 1),
              "stream_seconds": round(time.perf_counter() - trained, 1)}
    write_json_atomic(out / "results.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=1))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
