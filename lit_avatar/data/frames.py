"""Pixels between uint8 frames (files, metrics, the browser) and the batch's float video in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch


def to_unit_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return tensor.movedim(-1, -3)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[B, 3, T, H, W] in [-1, 1] (values outside are clipped) -> uint8 [B, T, H, W, 3] on the host."""
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()
