"""Streamed wav2vec2 features vs whole-clip features: the error near a window's edge, and what it does to
lip sync on SynthTalk.

wav2vec2 attends over its whole input (and normalises the waveform and the first conv layer's output over
it), so features computed per block over a bounded window [start - context, end + lookahead) cannot equal
those of the whole file. This experiment measures how much that matters:

1. error curve: relative feature error against the whole-file features, by distance (in video frames)
   from the nearer window edge (`edge_error_curve`, also checked by tests on a tiny random wav2vec2);
2. lip sync: a tiny SynthTalk model whose audio path is a (small, randomly initialised) wav2vec2 is trained
   (teacher, then ODE init: a causal student), and streams of held-out identities are generated twice with
   the same noise: features streamed per block over the window, and features of the whole clip. SynthSync r
   of both, for several windows.

    python -m bench.audio_window --out runs/audio_window --threads 1

Writes OUT/audio_window.json and prints the rows for BENCHMARKS.md.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lit_avatar.command import CommandParser, Namespace

# a small wav2vec2 with the base model's layout where it shapes the edge effect: the 7-layer conv feature
# encoder (320x down-sampling, group norm over time in the first layer), the 128-tap positional conv
# (+-1.28 s), global self-attention; narrower and shallower so it trains on a CPU
TINY_WAV2VEC2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     conv_dim=(32,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                     feat_extract_norm="group", do_stable_layer_norm=False)


def tiny_wav2vec2_config(**overrides):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**{**TINY_WAV2VEC2, **overrides})


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m bench.audio_window", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/audio_window", help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--clips", type=int, default=160, help="SynthTalk training clips of 2 s")
    p.add_argument("--teacher-steps", type=int, default=500, help="teacher training steps")
    p.add_argument("--ode-steps", type=int, default=150, help="ODE-init training steps")
    p.add_argument("--eval-clips", type=int, default=4, help="held-out clips streamed per window")
    p.add_argument("--eval-seconds", type=float, default=8.0, help="length of each evaluated clip in seconds")
    p.add_argument("--contexts", default="0.5,1,2", help="seconds of audio before a block")
    p.add_argument("--lookaheads", default="3,8", help="video frames of audio after a block")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling")
    return p


def save_encoder(folder: Path, seed: int) -> Path:
    from transformers import Wav2Vec2Model

    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(str(folder))
    return folder


def overlay(path: Path, encoder_dir: Path, feature_dim: int, stage: str) -> Path:
    """A YAML stacked on the tiny recipe: wav2vec2 instead of log-mel, the DiT's audio width to match."""
    model = ("{class_path: lit_avatar.models.dit.AvatarDiT, init_args: {preset: tiny, "
             f"overrides: {{audio_feature_dim: {feature_dim}}}}}}}")
    encoder = ("{class_path: lit_avatar.models.audio.Wav2Vec2AudioEncoder, "
               f"init_args: {{path: {encoder_dir}, layers: all}}}}")
    nets = [f"    model: {model}"] if stage == "teacher" else [f"    generator: {model}", f"    teacher: {model}"]
    path.write_text("model:\n  init_args:\n" + "\n".join(nets) + f"\n    audio_encoder: {encoder}\n")
    return path


def train(out: Path, args: Namespace) -> Path:
    from data_tools.synth import write_synthtalk
    from lit_avatar.pipeline import ODE_CONFIG, TEACHER_CONFIG, Stage, fit_stage

    data = out / "data"
    if not (data / "manifest.json").is_file():
        info = write_synthtalk(data, clips=args.clips, seconds=2.0, shards=4, size=32, seed=args.seed, val_identities=4)
        (data / "manifest.json").write_text(json.dumps(info))
    encoder_dir = save_encoder(out / "wav2vec2_tiny", args.seed)
    feature_dim = TINY_WAV2VEC2["hidden_size"] * TINY_WAV2VEC2["num_hidden_layers"]
    logs = out / "logs"
    teacher_yaml = overlay(out / "teacher_w2v.yaml", encoder_dir, feature_dim, "teacher")
    teacher_ckpt, _ = fit_stage(Stage("teacher", [str(TEACHER_CONFIG), str(teacher_yaml)], args.teacher_steps,
                                      ["--data.init_args.num_workers=0"]), data, logs, seed=args.seed)
    ode_yaml = overlay(out / "ode_w2v.yaml", encoder_dir, feature_dim, "ode")
    ode_ckpt, _ = fit_stage(Stage("ode_init", [str(ODE_CONFIG), str(ode_yaml)], args.ode_steps,
                                  [f"--model.init_args.teacher_weights={teacher_ckpt}",
                                   "--data.init_args.num_workers=0"]),
                            data, logs, seed=args.seed)
    return ode_ckpt


def eval_clips(out: Path, args: Namespace) -> list[dict]:
    """Held-out identities (a separate SynthTalk draw), long clips: audio, reference, mouth box."""
    from data_tools.synth import write_synthtalk
    from lit_avatar.data.datamodule import AvatarDataModule

    folder = out / "eval_data"
    if not (folder / "manifest.json").is_file():
        info = write_synthtalk(folder, clips=args.eval_clips + 1, seconds=args.eval_seconds, shards=1, size=32,
                               seed=args.seed + 1000, val_identities=args.eval_clips, identities=args.eval_clips + 1)
        (folder / "manifest.json").write_text(json.dumps(info))
    frames = int(args.eval_seconds * 25)
    dm = AvatarDataModule(train_shards=None, val_shards=str(folder / "val-*.tar"), batch_size=1, num_workers=0,
                          clip_frames=frames, size=32, seed=args.seed)
    dm.setup("validate")
    clips = []
    for batch in dm.val_dataloader():
        clips.append({"audio": batch["audio"][0].float().numpy(), "ref": batch["ref"][0].float(),
                      "box": batch["mouth_box"][0].tolist()})
        if len(clips) == args.eval_clips:
            break
    return clips


def stream(bundle, clip: dict, context_s: float, lookahead: int, whole: bool, seed: int) -> np.ndarray:
    from lit_avatar.inference.audio_stream import PrecomputedAudioFeatures
    from lit_avatar.inference.streamer import AvatarStreamer

    features = None
    if whole:
        with torch.inference_mode():
            audio = torch.from_numpy(clip["audio"])[None]
            features = PrecomputedAudioFeatures(bundle.audio_encoder(audio, num_frames=len(clip["audio"]) // 640)[0])
    streamer = AvatarStreamer(bundle.model, bundle.vae, bundle.audio_encoder, bundle.rollout_options, clip["ref"],
                              seed=seed, context_seconds=context_s, lookahead_frames=lookahead, audio_features=features)
    parts = [streamer.push_audio(clip["audio"][i:i + 3200]) for i in range(0, len(clip["audio"]), 3200)]
    parts.append(streamer.flush())
    return np.concatenate(parts)


def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from eval.synthsync import synthsync
    from lit_avatar.checkpoint import load_generator
    from lit_avatar.inference.audio_stream import edge_error_curve

    started = time.perf_counter()
    ckpt = train(out, args)
    bundle = load_generator(str(ckpt))
    clips = eval_clips(out, args)
    result = {"command": "python -m bench.audio_window " + " ".join(argv), "checkpoint": str(ckpt),
              "wav2vec2": TINY_WAV2VEC2, "eval_clips": len(clips), "eval_seconds": args.eval_seconds,
              "rollout": {"frames_per_block": bundle.rollout_options.frames_per_block,
                          "psb": bundle.rollout_options.psb.steps}, "windows": []}
    whole_r = []
    for i, clip in enumerate(clips):
        frames = stream(bundle, clip, 2.0, 3, whole=True, seed=args.seed + i)
        whole_r.append(synthsync(frames, clip["box"], clip["audio"])["r"])
        reversed_r = synthsync(frames, clip["box"], clip["audio"][::-1].copy())["r"]
        result.setdefault("whole_reversed_audio_r", []).append(reversed_r)
    result["whole_clip_r"] = float(np.mean(whole_r))
    result["whole_clip_r_per_clip"] = whole_r
    for context_s in [float(v) for v in args.contexts.split(",")]:
        for lookahead in [int(v) for v in args.lookaheads.split(",")]:
            rs = []
            for i, clip in enumerate(clips):
                frames = stream(bundle, clip, context_s, lookahead, whole=False, seed=args.seed + i)
                rs.append(synthsync(frames, clip["box"], clip["audio"])["r"])
            row = {"context_s": context_s, "lookahead_frames": lookahead, "streamed_r": float(np.mean(rs)),
                   "streamed_r_per_clip": rs, "delta_r": float(np.mean(rs)) - result["whole_clip_r"]}
            result["windows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "feature_error_by_edge_distance"}), flush=True)
    # the encoder's error by distance from a window's edge, on the first clip, at the windows' lengths
    audio = torch.from_numpy(clips[0]["audio"])[None]
    result["feature_error_by_edge_distance"] = {
        str(frames): edge_error_curve(bundle.audio_encoder, audio, frames)
        for frames in sorted({int(round(float(c) * 25)) + 2 + 3 for c in args.contexts.split(",")})}
    result["wall_s"] = time.perf_counter() - started
    (out / "audio_window.json").write_text(json.dumps(result, indent=1))
    print("| window (context s, lookahead frames) | SynthSync r streamed | whole clip | delta |")
    for row in result["windows"]:
        print(f"| {row['context_s']:g} s, {row['lookahead_frames']} | {row['streamed_r']:+.3f} | "
              f"{result['whole_clip_r']:+.3f} | {row['delta_r']:+.3f} |")
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
