"""Appearance of generated samples against their batch, the partner of SynthSync (true vs shuffled audio:
eval.synthsync.batch_synthsync).

One helper for the validation loops (TensorBoard: val/appearance_ssim, ... beside val/synthsync_r) and the
demo, so the numbers a user reads in either place are computed the same way.
"""
from __future__ import annotations

import numpy as np


def appearance_of_batch(frames: np.ndarray, batch: dict) -> dict[str, float]:
    """eval.appearance over uint8 frames [B,T,H,W,3] generated for `batch` (its `video`, `ref`, `mouth_box`);
    {} when the batch lacks them (e.g. precomputed latents)."""
    from eval.appearance import batch_appearance
    from lit_avatar.data.frames import to_uint8_frames

    if not all(k in batch for k in ("video", "ref", "mouth_box")):
        return {}
    n = len(frames)
    real = to_uint8_frames(batch["video"][:n])
    refs = to_uint8_frames(batch["ref"][:n, :, None])[:, 0]
    return batch_appearance(np.asarray(frames), real, batch["mouth_box"][:n].cpu().numpy(), refs)


def log_appearance(module, frames: np.ndarray, batch: dict, batch_size: int) -> None:
    """Log val/appearance_ssim (outside the mouth box, against the real clip), val/appearance_psnr and
    val/ref_ssim beside val/synthsync_r, so a noise sample with audio-driven darkness shows as what it is."""
    scores = appearance_of_batch(frames, batch)
    for key, name in (("ssim_outside_mouth", "appearance_ssim"), ("psnr_outside_mouth", "appearance_psnr"),
                      ("ref_ssim", "ref_ssim")):
        if key in scores:
            module.log(f"val/{name}", scores[key], batch_size=batch_size)
