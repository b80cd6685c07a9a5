"""`lit-avatar bench prompt`: what a prompt change mid-stream costs, against the block latency, in one run.

One stream (AvatarStreamer on a random model with a live text path, a random tiny umT5 as its text encoder)
changes its prompt every `--every` blocks, as the live server does: the new prompt is embedded (PromptEncoder:
umT5 on a cache miss, the memory or disk cache on a hit), handed to `set_prompt`, and applied at the next
block (the cached text K/V and the reference sink re-filled: the block's `text_s` stage). Side by side from
the same stream: the median latency of blocks with a change and without one (first block and URCR reset
blocks apart), and the change's own cost: embedding (miss, memory hit, disk hit) plus the refill, each as a
fraction of the median block. Times are this process's CPU seconds (blind to other processes' load; run with
--threads 1) and wall seconds. JSON on stdout (and --out).

    python -m bench.cli prompt --blocks 60 --every 4 --threads 1
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lit_avatar.command import CommandParser, int_list
from lit_avatar.errors import UserError, output_file

WORDS = "a woman man talking smiling red green blue hair skin background mouth open closed wide in studio".split()


def build_parser() -> CommandParser:
    parser = CommandParser(prog="lit-avatar bench prompt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="model preset (micro, tiny)")
    parser.add_argument("--size", type=int, default=32, help="video height and width in pixels")
    parser.add_argument("--blocks", type=int, default=60, help="blocks to stream")
    parser.add_argument("--every", type=int, default=4, help="change the prompt before every N-th block")
    parser.add_argument("--frames-per-block", type=int, default=2, help="latent frames per block")
    parser.add_argument("--psb-steps", default="6,4", help="denoising steps per block index (the demo's: 6,4)")
    parser.add_argument("--text-length", type=int, default=512, help="prompt tokens (Wan: 512)")
    parser.add_argument("--distinct", type=int, default=4, help="distinct prompts cycled through: the first "
                        "use of each is a cache miss, later ones memory hits")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="weight and noise seed")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no JSON on stdout")
    return parser


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _parts(preset: str, seed: int, text_dim_folder: Path, text_length: int, cache: Path):
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE
    from lit_avatar.prompts import PromptEncoder, write_tiny_text_encoder

    torch.manual_seed(seed)
    model = AvatarDiT(config=get_preset(preset, **({"audio_feature_dim": 16} if preset == "micro" else {}))).eval()
    for block in model.blocks:  # live audio and text paths: what a model trained with captions computes
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
        torch.nn.init.normal_(block.cross_attn.o.weight, std=0.2)
    folder = write_tiny_text_encoder(text_dim_folder, WORDS, d_model=model.config.text_dim, seed=seed)
    encoder = PromptEncoder(str(folder), max_length=text_length, cache_dir=str(cache))
    audio = MelAudioEncoder(n_mels=model.config.audio_feature_dim, normalize=False)
    return model, PatchVAE(spatial_factor=2, scale=2.0), audio, encoder


def _prompt_text(i: int) -> str:
    return " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(6))


def stream(args, model, vae, audio_encoder, encoder) -> tuple[list[dict], list[dict]]:
    """Stream args.blocks blocks, changing the prompt before every args.every-th; (block records, changes)."""
    from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions
    from lit_avatar.inference.streamer import AvatarStreamer

    options = RolloutOptions(frames_per_block=args.frames_per_block, psb=PSBOptions(steps=int_list(args.psb_steps,
                             "--psb-steps")), mci=MCIOptions(frames=2), urcr=URCROptions(max_frames=8, keep_frames=2))
    ref = np.random.default_rng(args.seed).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    streamer = AvatarStreamer(model, vae, audio_encoder, options, ref, text=encoder([_prompt_text(0)]),
                              seed=args.seed)
    block = args.frames_per_block * 640
    audio = (0.1 * np.random.default_rng(args.seed + 1).standard_normal(block * (args.blocks + 2))).astype(np.float32)
    changes, start = [], 0
    while streamer.blocks_done < args.blocks and start < len(audio):
        if streamer.blocks_done and streamer.blocks_done % args.every == 0 and (
                not changes or changes[-1]["block"] != streamer.blocks_done):
            index = len(changes) + 1
            text = _prompt_text(index % args.distinct)
            misses = encoder.encoded
            embedding, wall, cpu = _timed(lambda text=text: encoder([text]))
            streamer.set_prompt(embedding)
            changes.append({"block": streamer.blocks_done, "text": text, "embed_s": wall, "embed_cpu_s": cpu,
                            "embed": "miss" if encoder.encoded > misses else "memory hit"})
        streamer.push_audio(audio[start:start + block])
        start += block
    return list(streamer.latency), changes


def _disk_hit(encoder, text: str) -> dict:
    """The embedding read back by a fresh PromptEncoder over the same cache (another worker, a restart)."""
    from lit_avatar.prompts import PromptEncoder

    fresh = PromptEncoder(encoder.path, max_length=encoder.max_length, cache_dir=str(encoder.cache.folder))
    _, wall, cpu = _timed(lambda: fresh([text]))
    if fresh.encoded:
        raise RuntimeError("the disk cache missed a prompt the stream had encoded")
    return {"embed_s": wall, "embed_cpu_s": cpu}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(records: list[dict], changes: list[dict], disk: dict) -> dict:
    """Medians of steady blocks with and without a change, and the change's cost against the block."""
    steady = [r for r in records[1:] if not r["reset"]]
    rows = {}
    for clock in ("seconds", "cpu_seconds"):
        plain = _median([r[clock] for r in steady if not r["prompt_changed"]])
        changed = _median([r[clock] for r in steady if r["prompt_changed"]])
        rows[clock] = {"block_no_change": plain, "block_with_change": changed,
                       "ratio": changed / plain if plain and changed else None,
                       "reset_block": _median([r[clock] for r in records[1:] if r["reset"]])}
    refill = _median([r["text_s"] for r in records if r["prompt_changed"]])
    block = rows["seconds"]["block_no_change"]
    cost = {"refill_kv_s": refill}
    for kind, values in (("miss", [c["embed_s"] for c in changes if c["embed"] == "miss"]),
                         ("memory_hit", [c["embed_s"] for c in changes if c["embed"] == "memory hit"]),
                         ("disk_hit", [disk["embed_s"]])):
        embed = _median(values)
        total = None if embed is None or refill is None else embed + refill
        cost[kind] = {"embed_s": embed, "change_s": total,
                      "change_over_block": total / block if total is not None and block else None}
    return {"latency": rows, "change_cost": cost, "blocks": len(records),
            "blocks_with_change": sum(r["prompt_changed"] for r in records),
            "steady_blocks_with_change": sum(r["prompt_changed"] for r in steady),
            "reset_blocks": sum(r["reset"] for r in records),
            "changes": [{k: c[k] for k in ("block", "embed")} for c in changes]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see --help)."""
    args = build_parser().parse(sys.argv[1:] if argv is None else argv)
    out = output_file(args.out, "--out", suffixes=(".json",)) if args.out else None
    if args.every < 2 or args.blocks < 2 * args.every:
        raise UserError(f"--every {args.every} --blocks {args.blocks}: expected every >= 2 and blocks >= 2 * every "
                        "(blocks without a change to compare with)")
    if args.distinct < 1 or args.text_length < 1:
        raise UserError("--distinct and --text-length: expected >= 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lit-avatar-prompt-bench-") as tmp:
        model, vae, audio_encoder, encoder = _parts(args.preset, args.seed, Path(tmp) / "umt5", args.text_length,
                                                    Path(tmp) / "cache")
        with torch.inference_mode():
            records, changes = stream(args, model, vae, audio_encoder, encoder)
            disk = _disk_hit(encoder, changes[0]["text"])
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("config", "out", "quiet")},
              "torch": torch.__version__, "load_average": list(os.getloadavg()),
              **summarize(records, changes, disk)}
    text = json.dumps(result, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
