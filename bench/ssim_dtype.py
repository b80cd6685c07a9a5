"""SSIM of a long stream on the CPU in float64 vs float32 (why eval/appearance.py runs it in float32).

    python -m bench.ssim_dtype [--frames 1500] [--size 32] [--threads 1]

Prints one JSON: seconds for each dtype side by side on the same frames, their ratio, and the largest
difference of the SSIM maps.
"""
from __future__ import annotations

import json
import time

import torch

from lit_avatar.command import CommandParser


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m bench.ssim_dtype", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1500, help="frames (60 s at 25 fps)")
    p.add_argument("--size", type=int, default=32, help="frame side in pixels")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse(argv)
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(args.frames, 3, args.size, args.size, dtype=torch.float64, generator=gen)
    b = (a + 0.1 * torch.rand(a.shape, dtype=torch.float64, generator=gen)).clamp(0, 1)
    result, maps = {"benchmark": "ssim_dtype", "frames": args.frames, "size": args.size, "threads": args.threads}, {}
    for dtype in (torch.float32, torch.float64):
        start = time.perf_counter()
        _, maps[dtype] = ssim(a.to(dtype), b.to(dtype), data_range=1.0, reduction="none", return_full_image=True)
        result[f"{str(dtype).removeprefix('torch.')}_s"] = time.perf_counter() - start
    result["float64_over_float32"] = result["float64_s"] / result["float32_s"]
    result["max_map_difference"] = float((maps[torch.float32].double() - maps[torch.float64]).abs().max())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
