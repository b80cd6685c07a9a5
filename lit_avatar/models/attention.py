"""Attention layers of the DiT and the per-layer KV cache of causal inference.

Self-attention takes an optional *prefix* of keys/values (the reference sink, and in causal
inference the cached context frames) in front of its own, so one code path serves the
bidirectional teacher, block-causal training (one SDPA call per query block, over the same window the
cache holds) and KV-cached streaming.
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


@dataclass(frozen=True)
class CausalWindow:
    """The keys each query block of a full-sequence causal forward reads: exactly what the rollout's KV cache
    holds when that block is denoised or written (DESIGN.md "training attention equals inference attention").

    The sequence is `context_frames` frames of a teacher-forced context copy (the frames at the level the cache
    holds them: clean, or noised to the MCI level) followed by the frames being denoised, both on the same
    block grid. Query block [s, e) of either part reads the reference sink, the `window` frames before s (from
    the context copy when there is one, else from the sequence itself) and its own block.

    Args:
        tokens_per_frame: tokens of one latent frame.
        frames_per_block: latent frames per block.
        window: context frames a block sees (the cache's capacity); None: every earlier frame.
        context_frames: frames of the context copy at the head of the sequence (0: none).
    """

    tokens_per_frame: int
    frames_per_block: int
    window: int | None = None
    context_frames: int = 0

    def _lowest(self, start: int) -> int:
        return 0 if self.window is None else max(0, start - self.window)

    def key_spans(self, frames: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """(first query frame, end query frame, key frame spans) per query block of a `frames`-long sequence."""
        c, fpb = self.context_frames, self.frames_per_block
        out = []
        for s in range(0, c, fpb):  # the context copy: as the cache write of each block saw it
            e = min(s + fpb, c)
            out.append((s, e, [(self._lowest(s), e)]))
        for s in range(0, frames - c, fpb):  # the frames being denoised
            e = min(s + fpb, frames - c)
            if c:
                out.append((c + s, c + e, [(self._lowest(s), min(s, c)), (c + s, c + e)]))
            else:
                out.append((s, e, [(self._lowest(s), e)]))
        return out


def causal_window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: CausalWindow,
                       prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Block-causal windowed attention without a mask: q/k/v [B,L,H,D], L a whole number of frames.

    One unmasked SDPA call per query block over [sink | its key spans] keeps the fused kernels and never
    materialises an [L, L] mask (at 21 latent frames of 480x832 a dense one is ~1 GB per layer call).
    """
    n = layout.tokens_per_frame
    outs = []
    for qs, qe, spans in layout.key_spans(q.shape[1] // n):
        keys = [prefix[0]] if prefix is not None else []
        values = [prefix[1]] if prefix is not None else []
        for ks, ke in spans:
            if ke > ks:
                keys.append(k[:, ks * n:ke * n])
                values.append(v[:, ks * n:ke * n])
        kk = keys[0] if len(keys) == 1 else torch.cat(keys, dim=1)
        vv = values[0] if len(values) == 1 else torch.cat(values, dim=1)
        outs.append(sdpa(q[:, qs * n:qe * n], kk, vv))
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


class _Projections(nn.Module):
    """q/k/v/o projections with RMS qk-norm, named as in Wan's checkpoints (k and v read `context_dim`)."""

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


class SelfAttention(_Projections):
    """Self-attention with RMS qk-norm and 3-D RoPE; keys may be prefixed by cached ones."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__(dim, num_heads, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: CausalWindow | None = None,
        kv_buffer: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_window: tuple[int, int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B,L,dim] -> (out [B,L,dim], k, v [B,L,H,hd]); k is returned after RoPE, ready to cache.

        causal: when set, block-causal windowed attention over x's own tokens (see causal_window_sdpa); the
        prefix is seen by every query either way.
        With kv_buffer (a KV cache's per-layer buffers, see KVCache.attention_window), this call's keys and
        values are written into buffer[:, write_start:write_end] and attention reads the contiguous
        buffer[:, write_start:read_end]: the cached context is never copied (no concatenation per layer).
        """
        heads = self.num_heads
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (heads, -1)), *rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (heads, -1)), *rope)
        v = self.v(x).unflatten(-1, (heads, -1))
        if causal is not None:
            return self.o(causal_window_sdpa(q, k, v, causal, prefix)), k, v
        if kv_buffer is not None:
            write_start, write_end, read_end = kv_window
            kv_buffer[0][:, write_start:write_end] = k
            kv_buffer[1][:, write_start:write_end] = v
            keys, values = kv_buffer[0][:, write_start:read_end], kv_buffer[1][:, write_start:read_end]
        elif prefix is not None:
            keys, values = torch.cat([prefix[0], k], dim=1), torch.cat([prefix[1], v], dim=1)
        else:
            keys, values = k, v
        return self.o(sdpa(q, keys, values)), k, v

    def keys_values(self, x: torch.Tensor,
                    rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the keys (after RoPE) and values of x [B,L,dim], as forward returns them (a cache write
        whose attention output is not used)."""
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1)), *rope)
        return k, self.v(x).unflatten(-1, (self.num_heads, -1))


@dataclass
class FixedOutput:
    """A cross-attention's output that is the same for every query: a context of one token (the null text)
    gets softmax weight 1 whatever the query, so the output is o(v) [B, 1, dim], computed once per context."""

    value: torch.Tensor


class CrossAttention(_Projections):
    """Cross-attention to a context (text); K/V can be computed once and reused."""

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))
        return k, self.v(context).unflatten(-1, (self.num_heads, -1))

    def context_state(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | FixedOutput:
        """What a cached stream keeps of its context: the output itself when the context is one token
        (no query, norm or attention left to run per forward), else the K/V."""
        k, v = self.context_kv(context)
        return FixedOutput(self.o(v.flatten(2))) if k.shape[1] == 1 else (k, v)

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

    def frames_kv(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B,F,A,audio_dim] -> K/V stacked [2, B*F, A, H, hd] (computed once per block by a stream)."""
        return torch.stack(self.context_kv(audio.flatten(0, 1)))

    def forward_frames(self, x: torch.Tensor, audio: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x [B,F,N,dim], audio [B,F,A,audio_dim] -> [B,F,N,dim]; kv: frames_kv(audio) if already computed."""
        b, f, n, d = x.shape
        kv = self.frames_kv(audio) if kv is None else kv
        return self(x.flatten(0, 1), (kv[0], kv[1])).view(b, f, n, d)


@dataclass
class LayerCache:
    """Keys (after RoPE) and values of one layer, in one buffer per tensor laid out as

        [ scratch: block_frames*N | sink: the reference's tokens | ring: capacity*N ]

    so that attention of a block reads one contiguous slice: its own keys written at the end of the
    scratch, then the sink, then the filled part of the ring (filled slots are always a prefix of it).
    Attention does not depend on key order (positions are already rotated into the keys), so frames are
    written into free ring slots and the oldest frame is overwritten when the ring is full.
    """

    k: torch.Tensor | None = None  # [B, (block_frames + capacity)*N + sink, H, hd]
    v: torch.Tensor | None = None
    sink_start: int = 0  # where the sink begins (= the scratch's size)
    sink_tokens: int = 0
    text_kv: tuple[torch.Tensor, torch.Tensor] | FixedOutput | None = None  # CrossAttention.context_state

    @property
    def ref_k(self) -> torch.Tensor | None:
        return None if not self.sink_tokens else self.k[:, self.sink_start:self.sink_start + self.sink_tokens]

    @property
    def ref_v(self) -> torch.Tensor | None:
        return None if not self.sink_tokens else self.v[:, self.sink_start:self.sink_start + self.sink_tokens]


@dataclass
class KVCache:
    """Per-layer caches plus the bookkeeping shared by all layers.

    Bookkeeping is plain Python (slots, positions), so a forward needs no value from the device: no host
    synchronisation in the block loop.

    Args:
        num_layers: transformer blocks.
        capacity: context frames kept (the attention window, not counting the block being denoised).
        tokens_per_frame: tokens of one latent frame.
        block_frames: frames one forward may bring (the scratch in front of the sink); grows on demand.
    """

    num_layers: int
    capacity: int
    tokens_per_frame: int
    block_frames: int = 0
    layers: list[LayerCache] = field(default_factory=list)
    slot_frames: list[int] = field(default_factory=list)  # which absolute frame index sits in each slot (-1: empty)
    slot_positions: list[int] = field(default_factory=list)  # the RoPE time position each slot was written at
    write_count: int = 0
    sink_tokens: int = 0
    generation: int = 0  # bumped whenever a buffer a captured CUDA graph reads is replaced

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = [LayerCache() for _ in range(self.num_layers)]
        self.slot_frames = [-1] * self.capacity
        self.slot_positions = [-1] * self.capacity

    @property
    def num_frames(self) -> int:
        return sum(f >= 0 for f in self.slot_frames)

    @property
    def _scratch(self) -> int:
        return self.block_frames * self.tokens_per_frame

    @property
    def _ring_start(self) -> int:
        return self._scratch + self.sink_tokens

    def context_end(self) -> int:
        """Tokens of the ring in use; filled slots are always a prefix of the ring or all of it."""
        filled = [i for i, f in enumerate(self.slot_frames) if f >= 0]
        return (max(filled) + 1) * self.tokens_per_frame if filled else 0

    def _allocate(self, layer: int, like: torch.Tensor) -> None:
        """(Re)allocate one layer's buffers for the current sizes, keeping the sink and the ring."""
        cache = self.layers[layer]
        total = self._scratch + self.sink_tokens + self.capacity * self.tokens_per_frame
        shape = (like.shape[0], total, like.shape[2], like.shape[3])
        k, v = like.new_zeros(shape), like.new_zeros(shape)
        if cache.k is not None:  # move the sink and the ring behind the (larger) scratch
            keep = cache.k.shape[1] - cache.sink_start
            k[:, self._scratch:self._scratch + keep] = cache.k[:, cache.sink_start:]
            v[:, self._scratch:self._scratch + keep] = cache.v[:, cache.sink_start:]
        cache.k, cache.v = k, v
        cache.sink_start, cache.sink_tokens = self._scratch, self.sink_tokens
        self.generation += 1

    def _ensure(self, layer: int, like: torch.Tensor, frames: int) -> None:
        if frames > self.block_frames:
            self.block_frames = frames
        cache = self.layers[layer]
        if cache.k is None or cache.sink_start != self._scratch or cache.k.dtype != like.dtype:
            self._allocate(layer, like)

    def set_sink(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the reference sink's keys/values [B, N_ref, H, hd] (once per stream, before any frame)."""
        if self.sink_tokens not in (0, k.shape[1]):
            raise ValueError(f"sink of {k.shape[1]} tokens; this cache holds {self.sink_tokens}")
        self.sink_tokens = k.shape[1]
        self._ensure(layer, k, self.block_frames)
        cache = self.layers[layer]
        cache.k[:, cache.sink_start:cache.sink_start + k.shape[1]] = k
        cache.v[:, cache.sink_start:cache.sink_start + k.shape[1]] = v

    def attention_window(self, layer: int, like: torch.Tensor,
                         end: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int, int]]:
        """Buffers and (write_start, write_end, read_end) for a forward of like.shape[1] new tokens that
        attends to the sink and the first `end` ring tokens (SelfAttention's kv_buffer/kv_window)."""
        frames = like.shape[1] // self.tokens_per_frame
        self._ensure(layer, like, frames)
        cache = self.layers[layer]
        return (cache.k, cache.v), (self._scratch - like.shape[1], self._scratch, self._ring_start + end)

    def context(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The prefix keys/values: reference sink, then the first `end` ring tokens; a view, no copy."""
        cache = self.layers[layer]
        if cache.k is None or (not self.sink_tokens and not end):
            return None
        start = cache.sink_start
        stop = start + self.sink_tokens + end
        return cache.k[:, start:stop], cache.v[:, start:stop]

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
        """Store k/v [B, len(slots)*N, H, hd] of consecutive frames into the given slots (runs of
        consecutive slots in one copy)."""
        self._ensure(layer, k, self.block_frames)
        cache = self.layers[layer]
        n, base = self.tokens_per_frame, self._ring_start
        i = 0
        while i < len(slots):
            j = i + 1
            while j < len(slots) and slots[j] == slots[j - 1] + 1:
                j += 1
            dst = slice(base + slots[i] * n, base + (slots[j - 1] + 1) * n)
            cache.k[:, dst] = k[:, i * n:j * n]
            cache.v[:, dst] = v[:, i * n:j * n]
            i = j

    def set_text(self, layer: int, state: tuple[torch.Tensor, torch.Tensor] | FixedOutput) -> None:
        """Store one layer's text state (CrossAttention.context_state). A new text of the same shape is
        copied into the old buffers, so graphs captured on this cache stay valid across a prompt change."""
        cache = self.layers[layer]
        old, new = _tensors(cache.text_kv), _tensors(state)
        same = [(t.shape, t.dtype) for t in old] == [(t.shape, t.dtype) for t in new]
        if type(cache.text_kv) is type(state) and same:
            for dst, src in zip(old, new):
                dst.copy_(src)
            return
        cache.text_kv = state
        self.generation += 1

    def restart(self) -> None:
        """Make this cache ready for a new stream in the same buffers (sink and text are re-filled in place
        by prefill): a finished stream's CUDA graphs then replay in the next one without a capture."""
        self.clear_frames()
        self.write_count = 0

    def clear_frames(self) -> None:
        """Forget every context frame; keep the reference sink and the text K/V (URCR reset)."""
        self.slot_frames = [-1] * self.capacity
        self.slot_positions = [-1] * self.capacity


def _tensors(state: tuple[torch.Tensor, torch.Tensor] | FixedOutput | None) -> list[torch.Tensor]:
    if state is None:
        return []
    return [state.value] if isinstance(state, FixedOutput) else list(state)
