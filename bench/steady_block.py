"""The work a steady block no longer repeats, each change timed against the computation it replaced, side by
side in one process (A and B alternate, medians), on a CPU-sized slice of the 1.3B DiT (its real width,
heads, FFN and audio/text sizes; fewer layers and a smaller latent):

- text: a denoising forward with the null text's cross-attention output kept per stream vs its K/V attended;
- audio: a block's forwards (PSB steps + the cache write) with the audio K/V computed once vs in each;
- write: the cache-write forward without the last layer's tail and the head vs the full forward.

    python -m bench.steady_block --layers 1 --latent 8x16 --rounds 5 --threads 1
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time

import torch

from lit_avatar.command import CommandParser


def _timed(fn) -> float:
    """This process's CPU time: on a shared machine other processes' load does not enter the ratio (with
    --threads 1 it is the work done)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(layers: int, latent: tuple[int, int], rounds: int, steps: int = 4) -> dict:
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("wan2.1-1.3b", num_layers=layers)).eval().requires_grad_(False)
    cfg, (h, w), fpb = model.config, latent, 3
    cache = model.new_cache(3, h, w, block_frames=fpb)
    x = torch.randn(1, cfg.in_channels, fpb, h, w)
    t = torch.full((1,), 500.0)
    with torch.inference_mode():
        model.prefill(cache, torch.randn(1, cfg.in_channels, 1, h, w), None, 1, h // 2, w // 2)
        tokens = model.audio_tokens(torch.randn(1, 4 * fpb, cfg.audio_window, cfg.audio_feature_dim),
                                    starts_at_zero=False)
        model.forward_cached(x, torch.zeros(1), [0, 1, 2], cache, tokens, write_frames=[0, 1, 2])
        attended = copy.copy(cache)  # the same buffers, the text as K/V (the computation before)
        attended.layers = [copy.copy(layer) for layer in cache.layers]
        ctx = model.text_context(None, 1)
        for block, layer in zip(model.blocks, attended.layers):
            layer.text_kv = block.cross_attn.context_kv(ctx)
        pos = [3, 4, 5]

        def block_of_forwards(audio_once: bool) -> None:
            audio = model.block_audio(tokens) if audio_once else tokens
            for _ in range(steps):
                model.forward_cached(x, t, pos, cache, audio)
            model.forward_cached(x, t, pos, cache, audio, write_frames=pos, write_only=False)

        pairs = {
            "text": (lambda: model.forward_cached(x, t, pos, attended, tokens),
                     lambda: model.forward_cached(x, t, pos, cache, tokens)),
            "audio": (lambda: block_of_forwards(False), lambda: block_of_forwards(True)),
            "write": (lambda: model.forward_cached(x, t, pos, cache, tokens, write_frames=pos),
                      lambda: model.forward_cached(x, t, pos, cache, tokens, write_frames=pos, write_only=True)),
        }
        result = {}
        for name, (before, after) in pairs.items():
            before(), after()  # warm-up
            times = {"before": [], "after": []}
            for _ in range(rounds):
                times["before"].append(_timed(before))
                times["after"].append(_timed(after))
            b, a = statistics.median(times["before"]), statistics.median(times["after"])
            result[name] = {"before_cpu_s": b, "after_cpu_s": a, "after_over_before": a / b}
    return result


def main(argv: list[str]) -> int:
    p = CommandParser(prog="python -m bench.steady_block", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="DiT layers of the 1.3B width")
    p.add_argument("--latent", default="16x24", help="latent HxW (480x832 is 60x104)")
    p.add_argument("--rounds", type=int, default=7, help="alternating before/after rounds per change")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time measures the work)")
    args = p.parse(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.latent.lower().split("x"))
    result = {"benchmark": "steady_block", "command": "python -m bench.steady_block " + " ".join(argv),
              "layers": args.layers, "latent": [h, w], "threads": args.threads,
              "changes": measure(args.layers, (h, w), args.rounds)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
