"""Scores of long generated streams against their real SynthTalk recordings: what each contribution targets.

- overall: SynthSync r (true vs shuffled audio), appearance (eval.appearance) and the credited r;
- first blocks (PSB): appearance and SynthSync r of the first `first_seconds`, and the whole-frame error
  (MSE, PSNR) against the real recording of the first block and of the first `first_seconds`;
- seams (MCI): frame change across block seams over frame change inside blocks;
- drift (URCR, and error accumulation for MCI): SynthSync r, appearance SSIM, reference SSIM and
  brightness per `window_s` window (eval.drift), their slope per minute and last window.

Inputs are arrays on the batch's clips (uint8 frames [B,T,H,W,3]), so a stream batch is scored at once.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eval.appearance import judge, masked_ssim_psnr
from eval.drift import DriftCurve, curve_from_windows, window_bounds
from eval.synthsync import synthsync
from lit_avatar.causal_grid import CausalGrid

CURVES = ("synthsync_r", "ssim_outside_mouth", "ref_ssim", "brightness")


def frame_steps(frames: np.ndarray) -> np.ndarray:
    """Mean |frame t - frame t-1| for t = 1..T-1 (over batch, pixels, channels) of frames [B, T, H, W, C]."""
    x = np.asarray(frames, np.float64)
    return np.abs(x[:, 1:] - x[:, :-1]).mean(axis=(0, 2, 3, 4))


def seam_flicker(frames: np.ndarray, grid: CausalGrid) -> dict[str, float]:
    """Mean |frame t - frame t-1| across block seams vs inside blocks (ratio > 1: visible seams), with the
    seams where the causal grid puts them (Wan, tf 4, fpb 3: frames 9, 21, 33, ...).

    Args:
        frames: [B, T, H, W, C] (uint8 or float; the ratio is scale-free).
        grid: the generator's causal grid.
    """
    diff = frame_steps(frames)  # [T-1]: frame t vs t-1, t = 1..T-1
    seam = np.zeros(diff.size + 1, dtype=bool)
    seam[grid.seams(diff.size + 1)] = True
    seam = seam[1:]
    boundary = float(diff[seam].mean()) if seam.any() else float("nan")
    inside = float(diff[~seam].mean()) if (~seam).any() else float("nan")
    return {"flicker_boundary": boundary, "flicker_inside": inside,
            "flicker_ratio": boundary / inside if inside > 1e-12 else float("nan")}


def first_frames_error(gen: np.ndarray, real: np.ndarray, block_frames: int, first_frames: int) -> dict[str, float]:
    """Whole-frame error against the real recording over the first block and the first `first_frames` frames.

    MSE on [0, 1] pixels (mean over frames, pixels and channels) and PSNR from that MSE; the mouth is
    included, since the first block's mouth is what few denoising steps get wrong.

    Args:
        gen, real: uint8 [T, H, W, 3] of one clip.
        block_frames: video frames of the first generated block.
        first_frames: video frames of the first seconds.
    """
    out = {}
    for name, end in (("first_block", block_frames), ("first", first_frames)):
        a = gen[:end].astype(np.float64) / 255.0
        b = real[:end].astype(np.float64) / 255.0
        mse = float(((a - b) ** 2).mean())
        out[f"{name}_mse"], out[f"{name}_psnr"] = mse, float(10 * np.log10(1.0 / max(mse, 1e-10)))
    return out


def _sync(frames, box, audio, start: int, end: int, fps: float) -> float:
    hop = int(round(16000 / fps))
    return synthsync(frames[start:end], box, audio[start * hop:end * hop], fps=fps)["r"]


def score_streams(gen: np.ndarray, real: np.ndarray, refs: np.ndarray, boxes: Sequence[Sequence[float]],
                  audio: np.ndarray, grid: CausalGrid, window_s: float = 10.0,
                  first_seconds: float = 1.0) -> tuple[dict[str, float], dict[str, DriftCurve]]:
    """Scores of a batch of streams, averaged over clips, and the mean drift curves.

    Args:
        gen, real: uint8 [B, T, H, W, 3] (the real recordings of the same identities and audio).
        refs: uint8 [B, H, W, 3] reference images.
        boxes: [B, 4] mouth boxes.
        audio: [B, S] 16 kHz waveforms aligned with frame 0.
        grid: the generator's causal grid: where seams are, frames per second of audio.

    Returns:
        (scalars, curves): scalars hold the means over clips; curves the window means over clips.
    """
    b, t = gen.shape[:2]
    fps = grid.fps
    first = max(grid.frames_for_seconds(first_seconds), 2)
    bounds = window_bounds(t, fps, window_s)
    rows, curves = [], {k: [] for k in CURVES}
    for i in range(b):
        ssim, psnr = masked_ssim_psnr(gen[i], real[i], boxes[i])
        ref_ssim, _ = masked_ssim_psnr(gen[i], refs[i], boxes[i])
        row = {"synthsync_r": _sync(gen[i], boxes[i], audio[i], 0, t, fps),
               "synthsync_r_shuffled": _sync(gen[i], boxes[i], audio[(i + 1) % b] if b > 1 else audio[i][::-1],
                                             0, t, fps),
               "ssim_outside_mouth": float(ssim.mean()), "psnr_outside_mouth": float(psnr.mean()),
               "ref_ssim": float(ref_ssim.mean()),
               "first_ssim_outside_mouth": float(ssim[:first].mean()),
               "first_synthsync_r": _sync(gen[i], boxes[i], audio[i], 0, first, fps),
               **first_frames_error(gen[i], real[i], grid.block_span(0)[1], first)}
        row["synthsync_r_credited"] = judge(row["ssim_outside_mouth"], row["synthsync_r"],
                                            row["synthsync_r_shuffled"]).credited_r
        bright = gen[i].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        per_window = {
            "synthsync_r": [_sync(gen[i], boxes[i], audio[i], s, e, fps) for s, e in bounds],
            "ssim_outside_mouth": [float(ssim[s:e].mean()) for s, e in bounds],
            "ref_ssim": [float(ref_ssim[s:e].mean()) for s, e in bounds],
            "brightness": [float(bright[s:e].mean()) for s, e in bounds],
        }
        for k, values in per_window.items():
            c = curve_from_windows(bounds, values, fps)
            curves[k].append(c)
            row[f"drift_{k}_slope_per_min"] = c.slope_per_min
            row[f"drift_{k}_first"], row[f"drift_{k}_last"] = c.values[0], c.values[-1]
        rows.append(row)
    scalars = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    scalars.update(seam_flicker(gen, grid))
    mean_curves = {k: mean_curve(cs) for k, cs in curves.items()}
    return scalars, mean_curves


def mean_curve(curves: Sequence[DriftCurve]) -> DriftCurve:
    """Window-wise mean of curves on the same windows; slope and change are the means of the curves'."""
    values = np.nanmean(np.array([c.values for c in curves], np.float64), axis=0)
    return DriftCurve(list(curves[0].times), [float(v) for v in values],
                      float(np.mean([c.slope_per_min for c in curves])),
                      float(np.mean([c.last_minus_first for c in curves])))
