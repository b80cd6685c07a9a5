"""`python -m lit_avatar.micro_wan --out DIR`: the demo's stages in the 1.3B recipes' layout at micro width.

data -> teacher -> ODE init -> Self-Forcing DMD -> a 10 s `lit-avatar generate` stream -> `lit-avatar eval`
(drift and seam scores), through the three wan1.3b recipes (experiments/teacher/wan1.3b.yaml,
experiments/distill/wan1.3b_ode.yaml, experiments/distill/wan1.3b.yaml) stacked with one override file per
stage that changes sizes and paths only: the `micro-wan` preset, a tiny random diffusers AutoencoderKLWan
(16 latent channels, 8x spatial, temporal factor 4) and Wav2Vec2 written here, one CPU process in fp32,
SynthTalk at 32x32 in clips of 33 frames (9 latent frames = 3 blocks), a few steps per stage. The layout stays
the recipes': Wan's causal grid, PSB [8, 6, 4] on 3-latent-frame blocks, MCI, URCR 21/3, a 3-frame window
shorter than the clip. It checks plumbing, not quality: frame counts against the audio, seams and URCR resets
where the causal grid says, checkpoints that load into `generate`, finite metrics (`check_run`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from lit_avatar.command import CommandParser

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"teacher": ROOT / "experiments/teacher/wan1.3b.yaml",
           "ode_init": ROOT / "experiments/distill/wan1.3b_ode.yaml",
           "student": ROOT / "experiments/distill/wan1.3b.yaml"}
NETWORKS = {"teacher": ("model",), "ode_init": ("generator", "teacher"), "student": ("generator", "critic", "teacher")}
# the tiny umT5's vocabulary (SynthTalk-like captions); other words become <unk>
CAPTION_WORDS = ("a woman man talking smiling mouth open closed wide red green blue hair skin background face "
                 "in studio").split()
CLIP_FRAMES = 33  # 9 latent frames on the causal grid: blocks of 9, 12, 12 video frames
STREAM_SECONDS = 10.0


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m lit_avatar.micro_wan", description=__doc__)
    p.add_argument("--out", default="runs/micro_wan", help="output folder (weights, data, logs, stream, eval)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps of the teacher and the ODE init")
    p.add_argument("--dmd-steps", type=int, default=6, help="DMD steps (critic_steps 5: 2 generator updates)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and training")
    return p


def write_weights(folder: Path, seed: int = 0) -> dict[str, str]:
    """Tiny random networks of the recipes' own VAE, audio and text encoder classes, saved as local folders (the
    umT5's width is the micro-wan preset's text_dim)."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from lit_avatar.models.presets import get_preset
    from lit_avatar.prompts import write_tiny_text_encoder

    torch.manual_seed(seed)
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 16,
                     latents_std=[1.0] * 16).save_pretrained(str(folder / "wan" / "vae"))
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                 conv_dim=(8,) * 7, num_conv_pos_embeddings=8,
                                 num_conv_pos_embedding_groups=2)).save_pretrained(str(folder / "w2v"))
    write_tiny_text_encoder(folder / "umt5", CAPTION_WORDS, d_model=get_preset("micro-wan").text_dim, seed=seed)
    return {"vae": str(folder / "wan"), "w2v": str(folder / "w2v"), "umt5": str(folder / "umt5")}


def stage_overrides(stage: str, weights: dict[str, str], folder: Path, previous: dict[str, str]) -> dict:
    """The override file of one stage: sizes, paths, one CPU process in fp32; the recipe's layout untouched."""
    model: dict = {name: {"init_args": {"preset": "micro-wan", "overrides": {"gradient_checkpointing": False}}}
                   for name in NETWORKS[stage]}
    if stage == "teacher":
        model["model"]["init_args"]["weights"] = None
    model["vae"] = {"init_args": {"path": weights["vae"]}}
    model["audio_encoder"] = {"init_args": {"path": weights["w2v"]}}
    model["text_encoder"] = {"init_args": {"path": weights["umt5"], "dtype": "float32",
                                           "cache_dir": str(folder.parent / "prompts")}}
    if stage == "ode_init":
        model.update(teacher_weights=previous["teacher"], cache_dir=str(folder / "trajectories"))
    if stage == "student":
        model.update(teacher_weights=previous["teacher"], generator_weights=previous["ode_init"])
    return {"trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "32", "strategy": "auto",
                        "limit_val_batches": 1},
            "model": {"init_args": model},
            "data": {"init_args": {"batch_size": 2, "val_batch_size": 2, "num_workers": 0, "pin_memory": False,
                                   "clip_frames": CLIP_FRAMES, "size": 32, "shuffle_buffer": 8}}}


def train(out: Path, weights: dict[str, str], args) -> dict[str, str]:
    """Teacher, ODE init and DMD through pipeline.fit_stage (the demo's stage runner); their last checkpoints."""
    import yaml

    from lit_avatar import pipeline

    steps = {"teacher": args.steps, "ode_init": args.steps, "student": args.dmd_steps}
    ckpts: dict[str, str] = {}
    for stage in ("teacher", "ode_init", "student"):
        folder = out / "stages" / stage
        folder.mkdir(parents=True, exist_ok=True)
        override = folder / "overrides.yaml"
        override.write_text(yaml.safe_dump(stage_overrides(stage, weights, folder, ckpts)))
        spec = pipeline.Stage(stage, [str(RECIPES[stage]), str(override)], steps[stage])
        print(f"== {stage}: {steps[stage]} steps of {RECIPES[stage].relative_to(ROOT)} at micro width", flush=True)
        ckpt, _ = pipeline.fit_stage(spec, out / "data", out / "logs", args.seed, quiet=True)
        ckpts[stage] = str(ckpt)
    return ckpts


def stream_and_eval(out: Path, ckpts: dict[str, str], args) -> dict:
    """10 s of a held-out identity streamed by `lit-avatar generate` (and 2 s by the ODE-init checkpoint), then
    `lit-avatar eval` with drift and seam scores against the real recording."""
    from PIL import Image

    from data_tools.synth import make_clip
    from eval.cli import main_eval
    from lit_avatar.data.media import encode_audio, write_video
    from lit_avatar.inference.generate_cli import main as generate

    clip = make_clip(args.seed, 10**6, 3, STREAM_SECONDS, 32)  # identity 3: held out (val_identities 1 of 4)
    (out / "gen").mkdir(parents=True, exist_ok=True)
    (out / "real").mkdir(parents=True, exist_ok=True)
    wav, ref = out / "stream_audio.wav", out / "stream_ref.png"
    wav.write_bytes(encode_audio(clip.audio, 16000, codec="wav"))
    Image.fromarray(clip.ref).save(ref)
    write_video(out / "real" / "clip.mp4", clip.frames, fps=25, audio=clip.audio)
    box = ",".join(f"{v:.4f}" for v in clip.box)
    common = ["--audio", str(wav), "--ref", str(ref), "--seed", str(args.seed), "--mouth-box", box, "--no-progress",
              "--threads", str(args.threads)]
    generate(["--ckpt", ckpts["student"], "--out", str(out / "gen" / "clip.mp4"), *common])
    generate(["--ckpt", ckpts["ode_init"], "--out", str(out / "ode_init_2s.mp4"), "--seconds", "2", *common])
    main_eval(["--gen", str(out / "gen"), "--real", str(out / "real"), "--metrics", "drift,synthsync,appearance,seams",
               "--window", "2.5", "--out", str(out / "eval.json"), "--no-progress"])
    return {"samples": len(clip.audio), "video": str(out / "gen" / "clip.mp4"), "eval": str(out / "eval.json")}


def check_run(out: Path, stream: dict) -> list[str]:
    """What the plumbing must get right; returns the failures (empty: all good)."""
    from lit_avatar.causal_grid import CausalGrid
    from lit_avatar.data.media import read_video

    sidecar = json.loads(Path(stream["video"]).with_suffix(".json").read_text())
    grid = CausalGrid(sidecar["grid"]["frames_per_block"], sidecar["grid"]["temporal_factor"], sidecar["grid"]["fps"])
    urcr, latency = sidecar["rollout"]["urcr"], sidecar["latency"]
    frames = len(read_video(stream["video"])[0])
    expected = grid.frames_for_samples(stream["samples"])
    blocks = grid.blocks_for(expected)
    spans = [grid.block_span(i)[1] for i in range(blocks)]  # each block decodes whole; flush trims the last
    failures = []
    if (grid.frames_per_block, grid.temporal_factor) != (3, 4):
        failures.append(f"grid {grid}: expected the 1.3B layout (3 latent frames per block, temporal factor 4)")
    if not frames == sidecar["frames"] == expected == math.ceil(STREAM_SECONDS * 25):
        failures.append(f"frames: video {frames}, sidecar {sidecar['frames']}, audio says {expected}")
    if latency["block_frames"] != spans or not sum(spans[:-1]) < expected <= sum(spans):
        failures.append(f"block frames {latency['block_frames']} != the grid's spans {spans} covering {expected}")
    resets = grid.reset_blocks(blocks, urcr["max_frames"], urcr["keep_frames"])
    if latency["reset_block_indices"] != resets or not resets:
        failures.append(f"URCR resets at blocks {latency['reset_block_indices']}, the positions say {resets}")
    aggregate = json.loads(Path(stream["eval"]).read_text())["aggregate"]
    for key in ("synthsync_r", "ssim_outside_mouth", "flicker_ratio", "flicker_boundary",
                "drift_synthsync_r_slope_per_min", "drift_ref_ssim_slope_per_min"):
        value = aggregate.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            failures.append(f"eval {key} = {value!r}: expected a finite number")
    return failures


def main(argv: list[str] | None = None) -> int:
    from lit_avatar.errors import output_folder
    from lit_avatar.runs import open_run_folder

    args = build_parser().parse(argv)
    output_folder(args.out, "--out")
    out = open_run_folder(args.out, args.threads, "micro_wan.log")
    from data_tools.synth import write_synthtalk

    if not (out / "data" / "manifest.json").is_file():
        # no SynthTalk captions: their colour words are not in the micro umT5's vocabulary (CAPTION_WORDS)
        info = write_synthtalk(out / "data", clips=8, seconds=2.0, shards=4, size=32, seed=args.seed, val_identities=1,
                               identities=4, captions=False)
        (out / "data" / "manifest.json").write_text(json.dumps(info))
    weights = write_weights(out / "weights", args.seed)
    ckpts = train(out, weights, args)
    stream = stream_and_eval(out, ckpts, args)
    failures = check_run(out, stream)
    summary = {"checkpoints": ckpts, **stream, "failures": failures}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for line in failures:
        print(f"micro-wan check failed: {line}", flush=True)
    print(f"micro-wan: {'all checks passed' if not failures else f'{len(failures)} check(s) failed'} "
          f"({out / 'summary.json'})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
