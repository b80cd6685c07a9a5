"""Weighted flow-matching loss and the mouth-region weight map.

The weight map answers a measured problem (DESIGN.md "What a CPU can do here"): with a plain loss the
mouth, a few percent of the pixels, is learned last and lip sync barely emerges; weighting the mouth box
5x made sync appear within the same budget.
"""
from __future__ import annotations

import torch


def box_weight_map(boxes: torch.Tensor, height: int, width: int, weight: float) -> torch.Tensor:
    """Per-cell weights on a `height` x `width` grid: `weight` in cells the box overlaps, 1 elsewhere.

    Args:
        boxes: [B, 4] (x0, y0, x1, y1) normalised to [0, 1] (the batch's `mouth_box`).
        height: grid rows (latent h).
        width: grid columns (latent w).
        weight: weight inside the box.

    Returns:
        float [B, height, width], normalised so each sample's mean weight is 1: the loss keeps its scale
        and learning rate when the weighting is switched on or off.
    """
    boxes = boxes.float()
    rows = torch.arange(height, device=boxes.device, dtype=torch.float32)
    cols = torch.arange(width, device=boxes.device, dtype=torch.float32)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    # a cell [i, i+1) overlaps [y0*h, y1*h) when i + 1 > y0*h and i < y1*h
    in_rows = (rows + 1 > y0 * height) & (rows < y1 * height)
    in_cols = (cols + 1 > x0 * width) & (cols < x1 * width)
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    w = torch.where(inside, torch.full_like(inside, weight, dtype=torch.float32),
                    torch.ones_like(inside, dtype=torch.float32))
    return w / w.mean(dim=(1, 2), keepdim=True)


def weighted_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    spatial_weight: torch.Tensor | None = None,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over [B, C, t, h, w] with optional per-cell and per-frame weights.

    Args:
        pred: network output.
        target: regression target.
        spatial_weight: [B, h, w] weights (e.g. `box_weight_map`), shared by channels and frames.
        frame_mask: [B, t] 0/1 weights; 0 removes a frame from the loss (e.g. a given motion prefix).

    Returns:
        scalar: sum(w * err^2) / sum(w) per element, so a masked frame neither counts nor dilutes.
    """
    err = (pred.float() - target.float()).pow(2)
    b, c, t, h, w = err.shape
    weight = torch.ones(b, 1, t, h, w, device=err.device)
    if spatial_weight is not None:
        weight = weight * spatial_weight.to(err.device).reshape(b, 1, 1, h, w)
    if frame_mask is not None:
        weight = weight * frame_mask.to(err.device, torch.float32).reshape(b, 1, t, 1, 1)
    denom = weight.sum() * c
    return (err * weight).sum() / denom.clamp_min(1e-8)
