"""Old vs new cached forward, side by side: per-block time of the rollout at tiny scale on this machine.

The old code is exported from a git revision into a temporary folder; children of each version run in
turn (old, new, old, new, ...) so machine load affects both alike; each child reports its median
steady-state block time.

    python -m bench.cached_ab --old-ref 89eef6f --rounds 3 --blocks 30 --threads 1
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lit_avatar.command import CommandParser, Namespace

ROOT = Path(__file__).resolve().parents[1]


def child(args: Namespace) -> None:
    import torch

    from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
    from lit_avatar.inference.rollout import Rollout
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset(args.preset)).eval()
    c, h, w = model.config.in_channels, args.latent, args.latent
    options = RolloutOptions(frames_per_block=3, psb=PSBOptions(steps=[args.steps]),
                             urcr=URCROptions(max_frames=21, keep_frames=3))
    rollout = Rollout(model, options)
    tokens = model.audio_tokens(torch.randn(1, 3, 5, model.config.audio_feature_dim), starts_at_zero=False)
    times = []
    with torch.inference_mode():
        rollout.begin(torch.randn(1, c, 1, h, w), None, 1, (h, w), generator=torch.Generator().manual_seed(0))
        for i in range(args.blocks + 3):
            start = time.perf_counter()
            rollout.next_block(tokens, shape=(1, c, 3, h, w))
            if i >= 3 and not rollout.records[-1].reset:
                times.append(time.perf_counter() - start)
    import lit_avatar

    print(json.dumps({"median_block_s": statistics.median(times), "blocks": len(times),
                      "lit_avatar": lit_avatar.__file__}))


def main(argv: list[str]) -> int:
    p = CommandParser(prog="python -m bench.cached_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--old-ref", default="89eef6f", help="git revision of the old code")
    p.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    p.add_argument("--blocks", type=int, default=30, help="blocks streamed per round")
    p.add_argument("--preset", default="tiny", help="model preset")
    p.add_argument("--latent", type=int, default=32, help="latent side (tokens per frame = (latent/2)^2)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per block (+1 cache write)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--child", action="store_true", help="internal: run one side in this process")
    args = p.parse(argv)
    if args.child:
        child(args)
        return 0
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old_ref, "lit_avatar"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("blocks", "preset", "latent", "steps", "threads")]
        results: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for name, src in (("old", old), ("new", str(ROOT))):
                env = {**os.environ, "PYTHONPATH": src}  # ahead of the editable install: this version's lit_avatar
                out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *flags], env=env,
                                     cwd=old, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                if not row["lit_avatar"].startswith(src):
                    raise RuntimeError(f"{name}: imported {row['lit_avatar']}, expected it under {src}")
                results[name].append(row["median_block_s"])
    old_s, new_s = statistics.median(results["old"]), statistics.median(results["new"])
    print(json.dumps({"old_ref": args.old_ref, "per_round_s": results, "old_median_block_s": old_s,
                      "new_median_block_s": new_s, "old_over_new": old_s / new_s, "load_average": os.getloadavg(),
                      "settings": {k: v for k, v in vars(args).items() if k != "child"}}, indent=1))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
