"""Appearance score for SynthTalk: does the generated video look like the person and the scene it should?

SynthSync (eval.synthsync) only correlates the darkness inside the mouth box with the audio envelope, so
noise whose darkness in that box follows the audio passes it. It is therefore reported beside this score
and credited only where appearance passes (`judge`):

- ``ssim_outside_mouth``: SSIM (torchmetrics, Gaussian 11x11 window) of each generated frame against the
  real clip of the same identity and audio, averaged over the pixels outside the (padded) mouth box, then
  over frames. The mouth is left out so that lip motion is judged by SynthSync alone; small head motion
  costs little. Measured on SynthTalk 32x32 clips: the real clip 1.00, another clip of the same identity
  0.95-0.99, the frozen reference frame 0.95-0.99, another identity 0.21-0.31, flat grey 0.34-0.41,
  uniform noise 0.01.
- ``psnr_outside_mouth``: PSNR (dB) over the same pixels (same clips: 27-40 dB same identity, 8-12 other).
- ``ref_ssim``: the same SSIM against the reference image, per frame: identity and background consistency
  over time (its curve goes to eval.drift; a stream that slowly washes out shows a falling curve).

Thresholds (stated, not tuned on a model): appearance passes at ``ssim_outside_mouth >= 0.5``, halfway
between another identity or a flat frame (<= 0.41) and the same identity (>= 0.95); lip sync passes when
SynthSync r exceeds the shuffled-audio r by at least 0.2 (real clips: about +0.9 over shuffled).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lit_avatar.errors import UserError

APPEARANCE_PASS_SSIM = 0.5
SYNC_PASS_MARGIN = 0.2
MOUTH_PAD = 0.1  # the mouth box grows by this fraction of the frame on each side (lips move past the box)


def outside_mouth_mask(box: Sequence[float], height: int, width: int, pad: float = MOUTH_PAD) -> np.ndarray:
    """float32 [H, W]: 1 outside the padded mouth box, 0 inside it."""
    if len(box) != 4:
        raise UserError(f"mouth_box: expected 4 numbers (x0,y0,x1,y1) normalised to [0,1], got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    mask = np.ones((height, width), np.float32)
    r0, r1 = max(int(np.floor((y0 - pad) * height)), 0), int(np.ceil((y1 + pad) * height))
    c0, c1 = max(int(np.floor((x0 - pad) * width)), 0), int(np.ceil((x1 + pad) * width))
    mask[r0:r1, c0:c1] = 0.0
    if mask.sum() == 0:
        raise UserError(f"mouth_box: {list(box)} (padded by {pad}) covers the whole frame; nothing left to compare")
    return mask


def _as_float_frames(frames: np.ndarray, what: str):
    import torch

    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise UserError(f"{what}: expected frames [T,H,W,3], got shape {tuple(a.shape)}")
    # a copy in float64: the frames may be read-only (a PIL image's array), which torch warns about
    x = torch.from_numpy(np.array(a, dtype=np.float64)).permute(0, 3, 1, 2)
    return x / 255.0 if a.dtype == np.uint8 else x


def masked_ssim_psnr(gen: np.ndarray, target: np.ndarray, box: Sequence[float],
                     chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame SSIM and PSNR (dB) of gen against target outside the padded mouth box.

    Args:
        gen: generated frames [T, H, W, 3], uint8 or float in [0, 1].
        target: frames [T, H, W, 3] (the real clip) or [H, W, 3] / [1, H, W, 3] (one image for every frame).
        box: mouth box (x0, y0, x1, y1) normalised to [0, 1].
        chunk: frames per SSIM call (bounds memory on long streams).

    Returns:
        (ssim [T], psnr [T]) float64.
    """
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = _as_float_frames(gen, "generated frames")
    tgt = np.asarray(target)
    t = _as_float_frames(tgt[None] if tgt.ndim == 3 else tgt, "target frames")
    if t.shape[0] == 1:
        t = t.expand(g.shape[0], -1, -1, -1)
    if t.shape[1:] != g.shape[1:]:
        raise UserError(f"target frames: expected size {tuple(g.shape[2:])} like the generated ones, "
                        f"got {tuple(t.shape[2:])}")
    n = min(g.shape[0], t.shape[0])  # a real clip shorter than the stream: compare the overlap
    g, t = g[:n], t[:n]
    mask = torch.from_numpy(outside_mouth_mask(box, g.shape[2], g.shape[3])).double()
    ssim, psnr = [], []
    for s in range(0, n, chunk):
        a, b = g[s:s + chunk], t[s:s + chunk]
        # float32: CPU convolutions in float64 are ~12x slower (bench/ssim_dtype.py); the map moves by < 2e-5
        _, full = structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, reduction="none",
                                                      return_full_image=True)
        ssim.append(((full.double().mean(1) * mask).sum((1, 2)) / mask.sum()).numpy())
        mse = (((a - b) ** 2).mean(1) * mask).sum((1, 2)) / mask.sum()
        psnr.append((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).numpy())
    return np.concatenate(ssim), np.concatenate(psnr)


def appearance(gen: np.ndarray, real: np.ndarray | None, box: Sequence[float],
               ref: np.ndarray | None = None) -> dict[str, float | list[float]]:
    """Appearance of one generated video against its real clip and/or its reference image.

    Returns:
        ssim_outside_mouth, psnr_outside_mouth (against `real`, when given), ref_ssim (mean against `ref`,
        when given) and ref_ssim_per_frame (the curve over time).
    """
    out: dict = {}
    if real is not None:
        s, p = masked_ssim_psnr(gen, real, box)
        out["ssim_outside_mouth"] = float(s.mean())
        out["psnr_outside_mouth"] = float(p.mean())
    if ref is not None:
        s, _ = masked_ssim_psnr(gen, ref, box)
        out["ref_ssim"] = float(s.mean())
        out["ref_ssim_per_frame"] = s.tolist()
    if not out:
        raise UserError("appearance: needs the real clip or the reference image to compare with")
    return out


@dataclass(frozen=True)
class Verdict:
    """Whether a model's samples pass appearance and lip sync, and the SynthSync r that is credited."""

    appearance_pass: bool
    sync_pass: bool
    credited_r: float  # SynthSync r when appearance passes, else 0 (no evidence of lip sync)
    reason: str  # "" when both pass, else one plain sentence

    @property
    def passed(self) -> bool:
        return self.appearance_pass and self.sync_pass


def judge(ssim_outside_mouth: float, r: float, r_shuffled: float, who: str = "samples",
          min_ssim: float = APPEARANCE_PASS_SSIM, min_margin: float = SYNC_PASS_MARGIN) -> Verdict:
    """Apply the thresholds: appearance first (SynthSync means nothing on frames that are not a face)."""
    looks = bool(np.isfinite(ssim_outside_mouth) and ssim_outside_mouth >= min_ssim)
    syncs = bool(np.isfinite(r) and np.isfinite(r_shuffled) and r - r_shuffled >= min_margin)
    if not looks:
        reason = (f"{who} do not show the held-out identity: appearance SSIM {ssim_outside_mouth:.2f} "
                  f"< {min_ssim:g} (noise ~0.01, real clip 1.0)")
    elif not syncs:
        reason = (f"{who} show no lip sync: SynthSync r {r:+.2f} is not {min_margin:g} above shuffled audio "
                  f"{r_shuffled:+.2f}")
    else:
        reason = ""
    return Verdict(looks, syncs, float(r) if looks else 0.0, reason)


def batch_appearance(gen: np.ndarray, real: np.ndarray | None, boxes: np.ndarray,
                     refs: np.ndarray | None = None) -> dict[str, float]:
    """Mean appearance over a batch of clips [B, T, H, W, 3] (refs [B, H, W, 3]); per-key means."""
    rows = [appearance(gen[i], None if real is None else real[i], boxes[i],
                       None if refs is None else refs[i]) for i in range(len(gen))]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if not k.endswith("per_frame")}


class AppearanceScorer:
    """`lit-avatar eval --metrics appearance`: appearance per video and SynthSync credited only where it passes.

    Per video: ssim_outside_mouth / psnr_outside_mouth against the real video (when --real has it),
    ref_ssim against the reference (when --refs or the real video's frame 0 gives one), and with the
    audio the SynthSync r of the reversed audio (chance level) and the credited r (eval.appearance.judge;
    without a real video the reference SSIM stands in for the appearance test).
    """

    def __init__(self):
        self.rows: list[dict] = []
        self.last_ref_ssim: np.ndarray | None = None
        self.frames = 0

    def video(self, frames: np.ndarray, mouth_box, real: np.ndarray | None, ref: np.ndarray | None,
              audio: np.ndarray | None, fps: float) -> dict:
        from eval.synthsync import synthsync

        row: dict = {}
        self.frames += len(frames)
        if real is not None:
            s, p = masked_ssim_psnr(frames, real, mouth_box)
            row["ssim_outside_mouth"], row["psnr_outside_mouth"] = float(s.mean()), float(p.mean())
        self.last_ref_ssim = None
        if ref is not None:
            self.last_ref_ssim, _ = masked_ssim_psnr(frames, ref, mouth_box)
            row["ref_ssim"] = float(self.last_ref_ssim.mean())
        looks = row.get("ssim_outside_mouth", row.get("ref_ssim"))
        if audio is not None and looks is not None:
            r = synthsync(frames, mouth_box, audio, fps=fps)["r"]
            r_rev = synthsync(frames, mouth_box, np.ascontiguousarray(np.asarray(audio)[::-1]), fps=fps)["r"]
            verdict = judge(looks, r, r_rev)
            row.update({"synthsync_r_reversed_audio": r_rev, "synthsync_r_credited": verdict.credited_r,
                        "appearance_pass": verdict.appearance_pass})
        self.rows.append(row)
        return row

    def drift(self, fps: float, window_s: float):
        from eval.drift import per_frame_drift

        return None if self.last_ref_ssim is None else per_frame_drift(self.last_ref_ssim, fps, window_s)

    def protocol_info(self) -> dict:
        return {"protocol": f"ssim/psnr outside the mouth box padded by {MOUTH_PAD:g}; pass at ssim >= "
                            f"{APPEARANCE_PASS_SSIM:g}, sync credited at r - r_reversed >= {SYNC_PASS_MARGIN:g}",
                "videos": len(self.rows), "frames": self.frames}

    def aggregate(self) -> dict:
        out: dict = {}
        for key in ("ssim_outside_mouth", "psnr_outside_mouth", "ref_ssim", "synthsync_r_reversed_audio",
                    "synthsync_r_credited", "appearance_pass"):
            values = [float(r[key]) for r in self.rows if key in r]
            name = key if key != "appearance_pass" else "appearance_pass_rate"
            out[name] = float(np.mean(values)) if values else None
        return out
