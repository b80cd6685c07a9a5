"""CUDA graphs for the steady-state denoising forwards of the causal DiT.

In steady state every denoising forward has the same shapes: a block of `frames_per_block` latent frames
against a full ring of context. Replaying a captured graph removes the launch cost of a few thousand
kernels per block (30 layers x ~40 kernels x 4-5 forwards), which matters once the GPU is fast enough
for the host to become the bottleneck.

What varies between calls is copied into static inputs (latents, timestep, audio tokens); what a graph
reads by address stays put: the KV cache's buffers (allocated once per stream, written in place), the text
K/V, and the RoPE table of the call's positions (held by the graph's entry, so the model's table cache
cannot free it). A graph is keyed by shapes, positions and the context length; URCR keeps positions
bounded, so a stream needs a handful of graphs. Cache writes (the MCI context forward) run eagerly: their
ring slots change every block. Graphs belong to one cache's buffers: they are dropped when a forward brings
another cache (held by a weak reference, never by id(): a freed cache's id can be reused by the next one) or
when the cache replaced a buffer (KVCache.generation). A new stream started on a finished stream's cache
(Rollout.begin(cache=...)) reuses its buffers, so its graphs replay without a capture.

On a CPU (tests) the same bookkeeping runs with an eager "capture": the function is re-run from the static
inputs at every replay, so a varying input that was not copied in shows up as a wrong result.
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_avatar.models.dit import BlockAudio

GRAPHS_KEPT = 32


@dataclass
class _Entry:
    replay: Callable[[], None]
    x: torch.Tensor
    timestep: torch.Tensor
    audio: torch.Tensor | BlockAudio | None
    out: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]


def _cuda_capture(fn: Callable[[], torch.Tensor], pool: Any) -> tuple[Callable[[], None], torch.Tensor, Any]:
    """Warm up on a side stream (cuBLAS/cuDNN handles, autotuning), then capture one call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph.replay, out, graph.pool()


def _eager_capture(fn: Callable[[], torch.Tensor], pool: Any) -> tuple[Callable[[], None], torch.Tensor, Any]:
    """CPU stand-in: 'replay' re-runs fn on the static inputs and refreshes the static output in place."""
    out = fn()

    def replay() -> None:
        out.copy_(fn())

    return replay, out, pool


class CUDAGraphDiT(nn.Module):
    """An AvatarDiT whose cached denoising forwards replay CUDA graphs; everything else is the model's.

    Args:
        model: the AvatarDiT (weights in their final dtype and device).
        capture: how to capture (default: CUDA graphs on CUDA, the eager stand-in elsewhere).
    """

    def __init__(self, model: nn.Module, capture: Callable | None = None) -> None:
        super().__init__()
        self.inner = model
        self._capture = capture
        self._graphs: OrderedDict[tuple, _Entry] = OrderedDict()
        self._cache_ref: weakref.ref | None = None
        self._generation = -1
        self._pool = None
        self.captures = 0
        self.replays = 0
        self.capture_seconds = 0.0  # host time spent capturing (warm-up runs included)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inner(*args, **kwargs)

    def forward_cached(self, x: torch.Tensor, timestep: torch.Tensor, frame_positions, cache, audio_tokens=None,
                       write_frames: list[int] | None = None, write_only: bool = False) -> torch.Tensor | None:
        """AvatarDiT.forward_cached; denoising calls (no write, no gradient) replay a graph."""
        if write_frames is not None or torch.is_grad_enabled():
            return self.inner.forward_cached(x, timestep, frame_positions, cache, audio_tokens, write_frames,
                                             write_only)
        if isinstance(frame_positions, torch.Tensor):
            frame_positions = frame_positions.tolist()
        positions = tuple(int(p) for p in frame_positions)
        self._follow(cache)
        key = (tuple(x.shape), x.dtype, tuple(timestep.shape), positions, cache.context_end(),
               _audio_key(audio_tokens), cache.block_frames, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._build(x, timestep, positions, cache, audio_tokens)
            self._graphs[key] = entry
            if len(self._graphs) > GRAPHS_KEPT:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        entry.x.copy_(x)
        entry.timestep.copy_(timestep)
        _copy_audio(entry.audio, audio_tokens)
        entry.replay()
        self.replays += 1
        return entry.out.clone()  # the next replay of any graph of this pool overwrites the static output

    def _follow(self, cache) -> None:
        """Drop every graph when the cache is another one (or was freed) or replaced a buffer."""
        if self._cache_ref is None or self._cache_ref() is not cache or self._generation != cache.generation:
            self._graphs.clear()
            self._cache_ref, self._generation = weakref.ref(cache), cache.generation

    def _build(self, x, timestep, positions, cache, audio_tokens) -> _Entry:
        static_x, static_t = x.clone(), timestep.clone()
        static_audio = _clone_audio(audio_tokens)
        p = self.inner.config.patch_size
        rope = self.inner.rope_table(positions, x.shape[-2] // p[1], x.shape[-1] // p[2], x.device)
        cache_ref = weakref.ref(cache)  # the CPU stand-in keeps `run`: it must not keep the cache alive

        def run() -> torch.Tensor:
            return self.inner.forward_cached(static_x, static_t, list(positions), cache_ref(), static_audio)

        capture = self._capture or (_cuda_capture if x.device.type == "cuda" else _eager_capture)
        start = time.perf_counter()
        replay, out, self._pool = capture(run, self._pool)
        self.capture_seconds += time.perf_counter() - start
        self.captures += 1
        return _Entry(replay, static_x, static_t, static_audio, out, rope)


def _audio_key(audio) -> tuple | None:
    if audio is None:
        return None
    if isinstance(audio, BlockAudio):
        return (tuple(audio.tokens.shape), tuple(audio.kv.shape), audio.kv.dtype)
    return (tuple(audio.shape), audio.dtype)


def _clone_audio(audio):
    if isinstance(audio, BlockAudio):
        return BlockAudio(audio.tokens.clone(), audio.kv.clone())
    return None if audio is None else audio.clone()


def _copy_audio(static, audio) -> None:
    if isinstance(static, BlockAudio):
        static.tokens.copy_(audio.tokens)
        static.kv.copy_(audio.kv)
    elif static is not None:
        static.copy_(audio)
