"""3-D rotary position embedding with explicit positions.

Wan splits the head dim into time / height / width parts and rotates consecutive channel pairs.
Positions are passed in explicitly (not implied by the token's index) so that the reference sink
can sit at a fixed time index and URCR can re-index cached frames from the start.
"""
from __future__ import annotations

import torch
from torch import nn


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(time, height, width) channel split used by Wan: d - 4*(d//6), 2*(d//6), 2*(d//6)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


class RotaryEmbedding3D(nn.Module):
    """Computes (cos, sin) tables for a grid of frames x height x width tokens."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.dims = axis_dims(head_dim)

    def _angles(self, positions: torch.Tensor, dim: int) -> torch.Tensor:
        # float64 like Wan's tables; no buffers, so .to(bfloat16) on the model cannot degrade them.
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
        return positions.to(torch.float64)[:, None] * inv_freq[None, :]

    def forward(self, frame_positions: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for tokens ordered (frame, row, column).

        Args:
            frame_positions: [F] time index of each frame (any integers, negative allowed).
            height: token rows per frame.
            width: token columns per frame.

        Returns:
            cos, sin: [F*height*width, head_dim // 2] float32, one angle per rotated channel pair.
        """
        device = frame_positions.device
        t_dim, h_dim, w_dim = self.dims
        t = self._angles(frame_positions, t_dim)
        h = self._angles(torch.arange(height, device=device), h_dim)
        w = self._angles(torch.arange(width, device=device), w_dim)
        f = t.shape[0]
        angles = torch.cat(
            [
                t[:, None, None, :].expand(f, height, width, -1),
                h[None, :, None, :].expand(f, height, width, -1),
                w[None, None, :, :].expand(f, height, width, -1),
            ],
            dim=-1,
        ).reshape(f * height * width, -1)
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, L, H, D] by the angles of cos/sin [L, D/2]."""
    x_float = x.float().unflatten(-1, (-1, 2))
    x1, x2 = x_float[..., 0], x_float[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)
