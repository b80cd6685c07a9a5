"""Options that several benchmarks share: which model, at what size, and how the blocks are denoised."""
from __future__ import annotations

import torch

from lit_avatar.command import CommandParser


def add_model_options(parser: CommandParser, preset: str, height: int, width: int, latent_frames: int,
                      latent_frames_help: str) -> None:
    """--preset, --height, --width, --latent-frames, --frames-per-block, --psb-steps, --device, --seed."""
    parser.add_argument("--preset", default=preset, help="model preset (tiny, micro-wan, wan2.1-1.3b)")
    parser.add_argument("--height", type=int, default=height, help="video height in pixels")
    parser.add_argument("--width", type=int, default=width, help="video width in pixels")
    parser.add_argument("--latent-frames", type=int, default=latent_frames, help=latent_frames_help)
    parser.add_argument("--frames-per-block", type=int, default=3, help="latent frames per block")
    parser.add_argument("--psb-steps", default="8,6,4",
                        help="denoising steps per block index (PSB), comma-separated; later blocks use the last")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="weight and noise seed")
