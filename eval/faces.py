"""Face tracks and crops for the face metrics (SyncNet crops, ArcFace alignment).

Detection itself lives in ONE module shared with `data_tools build` (data_tools/faces.py: SCRFD from a
local ONNX file fed RGB as insightface does, or OpenCV's Haar cascade as the lower-quality fallback).
Here: the per-frame track built from its detections, and the SyncNet crop in two protocols.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SYNC_PROTOCOLS = ("syncnet_python", "per_frame")


def crop_square(frames: np.ndarray, boxes: np.ndarray, size: int = 224, crop_scale: float = 0.4,
                pad_value: float = 110.0) -> np.ndarray:
    """SyncNet-style face crops: a square around each box, widened by `crop_scale`, resized to size x size.

    The square has half-side bs*(1+crop_scale) with bs = max(box w, box h)/2; it is centred on the box
    horizontally and shifted down by bs*crop_scale so that the mouth sits well inside (as syncnet_python
    crops its face tracks). Outside the frame is filled with `pad_value`. Protocol "per_frame": the box of
    each frame as given, edges rounded, bilinear resize in float.

    Args:
        frames: [T, H, W, 3] uint8 or float (any range; kept as is).
        boxes: [T, 4] or [4] face boxes (x0, y0, x1, y1) in pixels.
        size: output side.
        crop_scale: relative margin.
        pad_value: fill outside the frame.

    Returns:
        float32 [T, size, size, 3] in the frames' value range.
    """
    frames = np.asarray(frames)
    t, h, w, _ = frames.shape
    boxes = np.broadcast_to(np.asarray(boxes, dtype=np.float64), (t, 4))
    out = np.empty((t, size, size, 3), np.float32)
    for i in range(t):
        x0, y0, x1, y1 = boxes[i]
        bs = max(x1 - x0, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = bs * (1 + crop_scale)
        top, left = cy - bs, cx - half
        side = max(int(round(2 * half)), 1)
        r0, c0 = int(round(top)), int(round(left))
        patch = np.full((side, side, 3), pad_value, np.float32)
        sr0, sr1 = max(r0, 0), min(r0 + side, h)
        sc0, sc1 = max(c0, 0), min(c0 + side, w)
        if sr1 > sr0 and sc1 > sc0:
            patch[sr0 - r0: sr1 - r0, sc0 - c0: sc1 - c0] = frames[i, sr0:sr1, sc0:sc1]
        x = torch.from_numpy(patch).permute(2, 0, 1)[None]
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    return out


def crop_syncnet_python(frames: np.ndarray, boxes: np.ndarray, size: int = 224, crop_scale: float = 0.4,
                        pad_value: int = 110, median_kernel: int = 13) -> np.ndarray:
    """syncnet_python's `run_pipeline.crop_video`: the box track's half-size and centre smoothed by a
    13-frame median filter (scipy.signal.medfilt, zero-padded at the ends as there), the frame padded by
    int(bs*(1+2*crop_scale)) with 110, edges truncated with int(), cv2.resize of the uint8 crop.

    Args:
        frames: [T, H, W, 3] uint8.
        boxes: [T, 4] or [4] face boxes (x0, y0, x1, y1) in pixels.
        size: output side.
        crop_scale: relative margin (syncnet_python's --crop_scale 0.4).
        pad_value: fill outside the frame.
        median_kernel: length of the median filter of the track.

    Returns:
        float32 [T, size, size, 3] in 0..255, channels in the frames' order.
    """
    import cv2
    from scipy.signal import medfilt

    frames = np.asarray(frames, dtype=np.uint8)
    t = len(frames)
    boxes = np.broadcast_to(np.asarray(boxes, dtype=np.float64), (t, 4))
    # syncnet_python drops tracks under 100 frames; a shorter video gets the longest odd window it holds
    # (a 13-frame window zero-padded over a few frames would shrink the box to nothing)
    median_kernel = min(median_kernel, t if t % 2 else t - 1) if t else median_kernel
    s = medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2, kernel_size=median_kernel)
    ys = medfilt((boxes[:, 1] + boxes[:, 3]) / 2, kernel_size=median_kernel)
    xs = medfilt((boxes[:, 0] + boxes[:, 2]) / 2, kernel_size=median_kernel)
    out = np.empty((t, size, size, 3), np.float32)
    cs = crop_scale
    for i in range(t):
        bs = s[i]
        bsi = int(bs * (1 + 2 * cs))
        padded = np.pad(frames[i], ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(pad_value, pad_value))
        my, mx = ys[i] + bsi, xs[i] + bsi
        face = padded[int(my - bs):int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)):int(mx + bs * (1 + cs))]
        if face.size == 0:  # a zero-size box (the median of a track with many misses at its ends)
            face = np.full((1, 1, 3), pad_value, np.uint8)
        out[i] = cv2.resize(face, (size, size))
    return out


def syncnet_crops(frames: np.ndarray, boxes: np.ndarray, protocol: str = "syncnet_python") -> np.ndarray:
    """224x224 crops for SyncNet in `protocol` ("syncnet_python" or "per_frame"), channels as the frames'."""
    if protocol == "syncnet_python":
        return crop_syncnet_python(frames, boxes)
    if protocol == "per_frame":
        return crop_square(np.asarray(frames, dtype=np.float32), boxes)
    raise ValueError(f"unknown SyncNet crop protocol {protocol!r}; expected one of {SYNC_PROTOCOLS}")


def normalised_to_pixels(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """(x0, y0, x1, y1) in [0, 1] -> pixels."""
    b = np.asarray(box, dtype=np.float64)
    return b * np.array([width, height, width, height], dtype=np.float64)


def face_track(frames: np.ndarray, detector) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The top-scoring face of every frame, with frames without a face filled in.

    A miss takes the box linearly interpolated between the nearest detections before and after it (as
    syncnet_python interpolates its face tracks), held constant past the first and last detection.

    Args:
        frames: RGB uint8 [T, H, W, 3].
        detector: data_tools.faces detector (`detect_with_landmarks`).

    Returns:
        boxes [T, 4], landmarks [T, 5, 2] or None (detector without landmarks), found [T] bool. With no
        face in any frame, boxes and landmarks are NaN.
    """
    t = len(frames)
    boxes = np.full((t, 4), np.nan)
    marks = np.full((t, 5, 2), np.nan)
    has_marks = False
    found = np.zeros(t, bool)
    for i, frame in enumerate(frames):
        b, k = detector.detect_with_landmarks(frame)
        if len(b):
            found[i] = True
            boxes[i] = b[0, :4]
            if k is not None:
                marks[i], has_marks = k[0], True
    if found.any() and not found.all():
        idx, hit = np.arange(t), np.flatnonzero(found)
        boxes = np.stack([np.interp(idx, hit, boxes[hit, j]) for j in range(4)], axis=1)
        if has_marks:
            flat = marks.reshape(t, 10)
            marks = np.stack([np.interp(idx, hit, flat[hit, j]) for j in range(10)], axis=1).reshape(t, 5, 2)
    return boxes, (marks if has_marks else None), found
