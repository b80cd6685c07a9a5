"""Writing sampled clips where a researcher looks: TensorBoard images/figures and mp4 files with audio.

TensorBoard's add_video needs moviepy 1.0.3, so clips are logged as a frame grid (one row per sample)
plus a figure of the waveform envelope against the mouth opening measured in the frames, and written as
mp4 with their audio track next to the run's logs.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np


def tensorboard_of(module: Any):
    """The SummaryWriter of the module's TensorBoard logger, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in getattr(module, "loggers", []) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def frame_grid(frames: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """uint8 [B, T, H, W, 3] -> [3, B*H, n*W] (CHW for add_image): row b shows n evenly spaced frames."""
    b, t, h, w, _ = frames.shape
    idx = np.linspace(0, t - 1, min(t, max_frames)).round().astype(int)
    rows = [np.concatenate(list(frames[i, idx]), axis=1) for i in range(b)]
    return np.concatenate(rows, axis=0).transpose(2, 0, 1)


def sync_figure(opening: np.ndarray, envelope: np.ndarray, title: str):
    """Mouth opening measured in a generated clip against its audio envelope, both scaled to [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def unit(x: np.ndarray) -> np.ndarray:
        span = float(x.max() - x.min())
        return (x - x.min()) / span if span > 1e-12 else np.zeros_like(x)

    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.plot(unit(envelope), label="audio envelope")
    ax.plot(unit(opening), label="mouth opening (generated)")
    ax.set_xlabel("frame")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def write_clips(folder: str, prefix: str, frames: np.ndarray, audio: np.ndarray | None, fps: float = 25.0) -> list[str]:
    """Write each clip as `{folder}/{prefix}_{i}.mp4` with its audio; returns the paths."""
    from lit_avatar.data.media import write_video

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(frames.shape[0]):
        path = os.path.join(folder, f"{prefix}_{i}.mp4")
        write_video(path, frames[i], fps=fps, audio=None if audio is None else audio[i])
        paths.append(path)
    return paths
