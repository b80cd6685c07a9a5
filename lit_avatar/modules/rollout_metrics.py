"""Cheap measurements of block-wise generation that need no metric network: seams between blocks and
slow drift of the frame statistics over a long rollout (what MCI and URCR are meant to fix)."""
from __future__ import annotations

import numpy as np
import torch


def boundary_flicker(video: torch.Tensor, frames_per_block: int) -> dict[str, float]:
    """Mean absolute frame difference across block boundaries vs inside blocks.

    Args:
        video: [B,3,T,H,W] (any value range; the ratio is scale-free).
        frames_per_block: video frames per generated block (latent frames x temporal factor).

    Returns:
        {"boundary", "inside", "ratio"}: ratio > 1 means visible seams where blocks meet.
    """
    diff = (video[:, :, 1:] - video[:, :, :-1]).abs().float().mean(dim=(0, 1, 3, 4))  # [T-1]: frame t+1 vs t
    t = torch.arange(1, video.shape[2])
    at_boundary = (t % frames_per_block) == 0
    boundary = float(diff[at_boundary].mean()) if at_boundary.any() else float("nan")
    inside = float(diff[~at_boundary].mean()) if (~at_boundary).any() else float("nan")
    ratio = boundary / inside if inside > 1e-12 else float("nan")
    return {"boundary": boundary, "inside": inside, "ratio": ratio}


def window_stats(frames: np.ndarray, window: int) -> dict[str, list[float]]:
    """Per-window mean brightness and contrast (std) of uint8/float frames [T,H,W,3]: a long rollout that
    drifts (washes out, darkens, loses contrast) shows it here before any learned metric is needed."""
    frames = np.asarray(frames, dtype=np.float64)
    means, stds = [], []
    for start in range(0, len(frames), window):
        chunk = frames[start:start + window]
        if len(chunk) < max(1, window // 2) and means:
            break
        means.append(float(chunk.mean()))
        stds.append(float(chunk.std()))
    return {"mean": means, "std": stds}
