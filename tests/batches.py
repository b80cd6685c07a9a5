"""Random training batches in the data contract (DESIGN.md): video, audio, reference, mouth box, meta."""
from __future__ import annotations

import torch


def random_batch(b: int = 2, frames: int = 4, size: int = 16, seed: int = 0) -> dict:
    """`b` clips of `frames` frames at `size` px, values in [-1, 1]; the same seed gives the same batch."""
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(b, 3, frames, size, size, generator=g) * 2 - 1,
            "audio": torch.randn(b, frames * 640, generator=g) * 0.1,
            "ref": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
            "mouth_box": torch.tensor([[0.25, 0.5, 0.75, 0.75]] * b),
            "meta": {"key": [f"s{seed}_{i}" for i in range(b)]}}
