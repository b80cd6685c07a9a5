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
ring slots change every block. Graphs belong to one stream's cache and are dropped when a new one starts.

On a CPU (tests) the same bookkeeping runs with an eager "capture": the function is re-run from the static
inputs at every replay, so a varying input that was not copied in shows up as a wrong result.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

GRAPHS_KEPT = 32


@dataclass
class _Entry:
    replay: Callable[[], None]
    x: torch.Tensor
    timestep: torch.Tensor
    audio: torch.Tensor | None
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
        self._cache_id: int | None = None
        self._pool = None
        self.captures = 0
        self.replays = 0

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inner(*args, **kwargs)

    def forward_cached(self, x: torch.Tensor, timestep: torch.Tensor, frame_positions, cache, audio_tokens=None,
                       write_frames: list[int] | None = None) -> torch.Tensor:
        """AvatarDiT.forward_cached; denoising calls (no write, no gradient) replay a graph."""
        if write_frames is not None or torch.is_grad_enabled():
            return self.inner.forward_cached(x, timestep, frame_positions, cache, audio_tokens, write_frames)
        if isinstance(frame_positions, torch.Tensor):
            frame_positions = frame_positions.tolist()
        positions = tuple(int(p) for p in frame_positions)
        if self._cache_id != id(cache):  # a new stream: its buffers are elsewhere
            self._graphs.clear()
            self._cache_id = id(cache)
        key = (tuple(x.shape), x.dtype, tuple(timestep.shape), positions, cache.context_end(),
               None if audio_tokens is None else (tuple(audio_tokens.shape), audio_tokens.dtype),
               cache.block_frames, x.device)
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
        if entry.audio is not None:
            entry.audio.copy_(audio_tokens)
        entry.replay()
        self.replays += 1
        return entry.out.clone()  # the next replay of any graph of this pool overwrites the static output

    def _build(self, x, timestep, positions, cache, audio_tokens) -> _Entry:
        static_x, static_t = x.clone(), timestep.clone()
        static_audio = None if audio_tokens is None else audio_tokens.clone()
        p = self.inner.config.patch_size
        rope = self.inner.rope_table(positions, x.shape[-2] // p[1], x.shape[-1] // p[2], x.device)

        def run() -> torch.Tensor:
            return self.inner.forward_cached(static_x, static_t, list(positions), cache, static_audio)

        capture = self._capture or (_cuda_capture if x.device.type == "cuda" else _eager_capture)
        replay, out, self._pool = capture(run, self._pool)
        self.captures += 1
        return _Entry(replay, static_x, static_t, static_audio, out, rope)
