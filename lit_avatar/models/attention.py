"""Attention layers of the DiT and the per-layer KV cache of causal inference.

Self-attention takes an optional *prefix* of keys/values (the reference sink, and in causal
inference the cached context frames) in front of its own, so one code path serves the
bidirectional teacher, block-causal training (with a mask) and KV-cached streaming.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lit_avatar.models.rope import apply_rope


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """q [B,Lq,H,D], k/v [B,Lk,H,D] -> [B,Lq,H*D]; mask [Lq,Lk] bool, True = may attend."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def block_causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_tokens: int,
                      prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Block-causal attention without a mask: q/k/v [B,L,H,D] of L tokens in blocks of `block_tokens`.

    Query block j attends to the prefix (the reference sink) and the keys of blocks 0..j. One unmasked
    SDPA call per query block keeps the fused kernels and never materialises an [L, L] mask (at 21 latent
    frames of 480x832 a dense one is ~1 GB per layer call, ~2 GB once made additive).
    """
    outs = []
    for start in range(0, q.shape[1], block_tokens):
        end = min(start + block_tokens, q.shape[1])
        keys, values = k[:, :end], v[:, :end]
        if prefix is not None:
            keys, values = torch.cat([prefix[0], keys], dim=1), torch.cat([prefix[1], values], dim=1)
        outs.append(sdpa(q[:, start:end], keys, values))
    return torch.cat(outs, dim=1)


class RMSNorm(nn.Module):
    """RMS norm computed in float32 (Wan's qk-norm across all heads)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SelfAttention(nn.Module):
    """Self-attention with RMS qk-norm and 3-D RoPE; keys may be prefixed by cached ones."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        block_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B,L,dim] -> (out [B,L,dim], k, v [B,L,H,hd]); k is returned after RoPE, ready to cache.

        block_tokens: when set, block-causal over x's own tokens (see block_causal_sdpa); the prefix is
        seen by every query either way.
        """
        heads = self.num_heads
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (heads, -1)), *rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (heads, -1)), *rope)
        v = self.v(x).unflatten(-1, (heads, -1))
        if block_tokens is not None and block_tokens < x.shape[1]:
            return self.o(block_causal_sdpa(q, k, v, block_tokens, prefix)), k, v
        if prefix is not None:
            keys, values = torch.cat([prefix[0], k], dim=1), torch.cat([prefix[1], v], dim=1)
        else:
            keys, values = k, v
        return self.o(sdpa(q, keys, values)), k, v


class CrossAttention(nn.Module):
    """Cross-attention to a context (text); K/V can be computed once and reused."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))
        return k, self.v(context).unflatten(-1, (self.num_heads, -1))

    def forward(self, x: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        return self.o(sdpa(q, *context_kv))


class FrameLocalCrossAttention(CrossAttention):
    """Each latent frame attends only to its own audio tokens, so streaming needs no future audio
    beyond the frame's window. The output projection starts at zero: a Wan checkpoint loaded into
    the model reproduces the video model exactly until the audio path is trained."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, eps: float = 1e-6):
        super().__init__(dim, num_heads, context_dim, eps)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)

    def forward_frames(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """x [B,F,N,dim], audio [B,F,A,audio_dim] -> [B,F,N,dim]."""
        b, f, n, d = x.shape
        kv = self.context_kv(audio.flatten(0, 1))
        return self(x.flatten(0, 1), kv).view(b, f, n, d)


@dataclass
class LayerCache:
    """Keys (after RoPE) and values of one layer: the reference sink and a ring of context frames.

    The ring holds `capacity` frames of `tokens_per_frame` tokens. Attention does not depend on
    key order (positions are already rotated into the keys), so frames are written into free
    slots and the oldest frame is overwritten when the ring is full.
    """

    ref_k: torch.Tensor | None = None
    ref_v: torch.Tensor | None = None
    k: torch.Tensor | None = None  # [B, capacity*N, H, hd]
    v: torch.Tensor | None = None
    text_kv: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class KVCache:
    """Per-layer caches plus the bookkeeping shared by all layers.

    Args:
        num_layers: transformer blocks.
        capacity: context frames kept (the attention window, not counting the block being denoised).
        tokens_per_frame: tokens of one latent frame.
    """

    num_layers: int
    capacity: int
    tokens_per_frame: int
    layers: list[LayerCache] = field(default_factory=list)
    slot_frames: list[int] = field(default_factory=list)  # which absolute frame index sits in each slot (-1: empty)
    slot_positions: list[int] = field(default_factory=list)  # the RoPE time position each slot was written at
    write_count: int = 0

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = [LayerCache() for _ in range(self.num_layers)]
        self.slot_frames = [-1] * self.capacity
        self.slot_positions = [-1] * self.capacity

    @property
    def num_frames(self) -> int:
        return sum(f >= 0 for f in self.slot_frames)

    def context_end(self) -> int:
        """Tokens of the ring in use; filled slots are always a prefix of the ring or all of it."""
        filled = [i for i, f in enumerate(self.slot_frames) if f >= 0]
        return (max(filled) + 1) * self.tokens_per_frame if filled else 0

    def context(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The prefix keys/values: reference sink, then the first `end` ring tokens (see context_end)."""
        cache = self.layers[layer]
        parts_k, parts_v = [], []
        if cache.ref_k is not None:
            parts_k.append(cache.ref_k)
            parts_v.append(cache.ref_v)
        if cache.k is not None and end:
            parts_k.append(cache.k[:, :end])
            parts_v.append(cache.v[:, :end])
        if not parts_k:
            return None
        if len(parts_k) == 1:
            return parts_k[0], parts_v[0]
        return torch.cat(parts_k, dim=1), torch.cat(parts_v, dim=1)

    def reserve_slots(self, frame_indices: list[int], positions: list[int]) -> list[int]:
        """Pick ring slots for new frames (free first, else the oldest) and record them."""
        chosen = []
        for frame, position in zip(frame_indices, positions):
            if frame in self.slot_frames:  # rewriting a frame (e.g. a second cache write) reuses its slot
                slot = self.slot_frames.index(frame)
            elif -1 in self.slot_frames:
                slot = self.slot_frames.index(-1)
            else:
                slot = min(range(self.capacity), key=lambda i: self.slot_frames[i])
            self.slot_frames[slot] = frame
            self.slot_positions[slot] = position
            chosen.append(slot)
        self.write_count += 1
        return chosen

    def write(self, layer: int, slots: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v [B, len(slots)*N, H, hd] of consecutive frames into the given slots."""
        cache = self.layers[layer]
        n = self.tokens_per_frame
        if cache.k is None:
            shape = (k.shape[0], self.capacity * n, k.shape[2], k.shape[3])
            cache.k = k.new_zeros(shape)
            cache.v = v.new_zeros(shape)
        for i, slot in enumerate(slots):
            cache.k[:, slot * n:(slot + 1) * n] = k[:, i * n:(i + 1) * n]
            cache.v[:, slot * n:(slot + 1) * n] = v[:, i * n:(i + 1) * n]

    def clear_frames(self) -> None:
        """Forget every context frame; keep the reference sink and the text K/V (URCR reset)."""
        self.slot_frames = [-1] * self.capacity
        self.slot_positions = [-1] * self.capacity
