"""Decode time per streamed block: the full Wan 2.1 VAE decoder vs the tiny (TAEHV taew2_1) decoder, side by side.

    python -m bench.decode [--size 64x64] [--blocks 4] [--frames-per-block 3] [--base-dim 96] [--threads N]
                           [--device cuda --dtype bfloat16]   (on a GPU: e.g. --size 480x832)

Both decoders get random weights in their real layouts (AutoencoderKLWan with Wan 2.1's config, `--base-dim`
96 by default; TinyDecoder at the taew2_1 widths) and decode the same random latents block by block through
their stream decoders, as AvatarStreamer does. Blocks alternate between the two, so both see the same machine
load. Block 0 (1 + 4*(fpb-1) frames, first-call costs) is left out of the medians; every later block makes
4*fpb frames. Also counted, once per decoder, the FLOPs of one steady block (torch's FlopCounterMode), and
their value scaled to 480x832 (convolutions: FLOPs proportional to pixels). Prints one JSON.
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from lit_avatar.command import CommandParser
from lit_avatar.errors import UserError

WAN21_VAE = {"z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
             "temperal_downsample": [False, True, True]}  # diffusers' AutoencoderKLWan defaults = Wan 2.1
FULL_SIZE = (480, 832)


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m bench.decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="64x64", help="video HxW, multiples of 8")
    p.add_argument("--blocks", type=int, default=4, help="blocks decoded per decoder (block 0 included)")
    p.add_argument("--frames-per-block", type=int, default=3, help="latent frames per block (Wan scale: 3)")
    p.add_argument("--base-dim", type=int, default=96, help="AutoencoderKLWan base_dim (Wan 2.1: 96)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and latents")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights' dtype")
    return p


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: expected HxW, e.g. 64x64") from None
    if height < 8 or width < 8 or height % 8 or width % 8:
        raise UserError(f"--size {text!r}: expected sides that are positive multiples of 8")
    return height, width


def _decoders(base_dim: int) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKLWan

    from lit_avatar.models.taehv import TinyDecoder
    from lit_avatar.models.vae import WanVAE

    full = WanVAE.from_model(AutoencoderKLWan(base_dim=base_dim, **WAN21_VAE))
    return {"full": full, "tiny": TinyDecoder().eval().requires_grad_(False)}


def _flops(decoder: torch.nn.Module, first: torch.Tensor, block: torch.Tensor) -> int:
    """FLOPs of decoding `block` after `first` (a steady block: the causal caches are warm)."""
    from torch.utils.flop_counter import FlopCounterMode

    stream = decoder.stream_decoder()
    stream(first)
    with FlopCounterMode(display=False) as counter:
        stream(block)
    return int(counter.get_total_flops())


def _timed(stream, block: torch.Tensor) -> tuple[float, int]:
    start = time.perf_counter()
    frames = stream(block).shape[2]
    if block.is_cuda:
        torch.cuda.synchronize(block.device)  # kernels are asynchronous: wait before reading the clock
    return time.perf_counter() - start, frames


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); prints one JSON."""
    args = build_parser().parse(argv)
    height, width = _size(args.size)
    if args.blocks < 2 or args.frames_per_block < 1 or args.base_dim < 1:
        raise UserError("--blocks >= 2, --frames-per-block >= 1 and --base-dim >= 1 expected")
    if args.threads:
        torch.set_num_threads(args.threads)
    from lit_avatar.inference.generate_cli import _device

    device, dtype = _device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    decoders = {name: decoder.to(device, dtype) for name, decoder in _decoders(args.base_dim).items()}
    shape = (1, 16, args.blocks * args.frames_per_block, height // 8, width // 8)
    latents = torch.randn(shape).to(device, dtype)
    blocks = latents.split(args.frames_per_block, dim=2)
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    frames: dict[str, list[int]] = {name: [] for name in decoders}
    with torch.inference_mode():
        streams = {name: decoder.stream_decoder() for name, decoder in decoders.items()}
        for block in blocks:  # alternate: both decoders see the same load on a shared machine
            for name, stream in streams.items():
                spent, count = _timed(stream, block)
                seconds[name].append(spent)
                frames[name].append(count)
        flops = {name: _flops(decoder, blocks[0], blocks[1]) for name, decoder in decoders.items()}
    scale = FULL_SIZE[0] * FULL_SIZE[1] / (height * width)
    result = {"benchmark": "decode", "size": [height, width], "frames_per_block": args.frames_per_block,
              "blocks": args.blocks, "base_dim": args.base_dim, "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": args.dtype, "torch": torch.__version__}
    for name in decoders:
        steady = seconds[name][1:]
        result[name] = {"block_s": seconds[name], "frames": frames[name], "median_steady_block_s":
                        statistics.median(steady), "ms_per_frame": 1000 * statistics.median(steady) / frames[name][1],
                        "gflop_per_steady_block": flops[name] / 1e9,
                        "tflop_per_steady_block_at_480x832": flops[name] * scale / 1e12}
    result["full_over_tiny_time"] = result["full"]["median_steady_block_s"] / result["tiny"]["median_steady_block_s"]
    result["full_over_tiny_flops"] = flops["full"] / flops["tiny"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
