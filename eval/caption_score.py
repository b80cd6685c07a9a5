"""Caption response: how far a caption that names another colour moves a region of the generated frames toward it.

For one clip, one region (e.g. the background) with true colour c, and a caption naming colour n instead:

    score = <m - c, n - c> / |n - c|^2,   m = mean RGB of the region's pixels over the generated frames

the fraction of the way from the true colour to the named one, measured along that line: 1 when the region
is the named colour, 0 when it is the true colour (or moved only sideways), negative when it moved away.
A generator that ignores captions scores the same with the true and the other caption, so the caption's
effect is the paired difference score(other caption) - score(true caption) of two samples that share their
noise, audio and reference.
"""
from __future__ import annotations

import numpy as np


def region_colour(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean RGB [3] of the pixels in `mask` [H, W] over frames uint8/float [T, H, W, 3] (or one [H, W, 3])."""
    frames = np.asarray(frames, np.float64)
    if frames.ndim == 3:
        frames = frames[None]
    mask = np.asarray(mask, bool)
    if mask.shape != frames.shape[1:3]:
        raise ValueError(f"region mask {mask.shape} does not match frames {frames.shape[1:3]}")
    if not mask.any():
        raise ValueError("region mask selects no pixel")
    return frames[:, mask].reshape(-1, 3).mean(axis=0)


def colour_shift(measured, true, named) -> float:
    """The fraction of the way from `true` to `named` (RGB) that `measured` lies, projected on that line."""
    measured, true, named = (np.asarray(c, np.float64) for c in (measured, true, named))
    direction = named - true
    length2 = float(direction @ direction)
    if length2 == 0.0:
        raise ValueError("the named colour equals the true colour: no direction to move in")
    return float((measured - true) @ direction / length2)


def caption_score(frames: np.ndarray, mask: np.ndarray, true, named) -> float:
    """`colour_shift` of the mask's mean colour in `frames` from the region's `true` colour toward `named`."""
    return colour_shift(region_colour(frames, mask), true, named)
