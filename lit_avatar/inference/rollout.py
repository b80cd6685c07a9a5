"""THE block loop: denoise block i with its PSB step list, write the MCI-corrupted context into the
KV cache, reset and re-index the cache (URCR) when the RoPE horizon is reached.

Self-forcing training and streaming inference both drive this class; ablations switch its options.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from lit_avatar.causal_grid import CausalGrid
from lit_avatar.diffusion.schedule import psb_level_indices, psb_levels
from lit_avatar.inference.options import RolloutOptions
from lit_avatar.models.attention import KVCache


@dataclass
class BlockRecord:
    """What happened for one block (tests and benchmarks read these)."""

    index: int
    positions: list[int]
    sigmas: list[float]
    context_sigma: float
    reset: bool
    forwards: int


@dataclass
class _HistoryFrame:
    latent: torch.Tensor  # [B,C,1,h,w], clean
    audio: torch.Tensor | None  # [B,1,A,D]
    index: int


class Rollout:
    """Stateful block-by-block generator over one stream.

    Args:
        model: an AvatarDiT (causal use: forward_cached / prefill / new_cache).
        options: PSB, MCI, URCR and the block size.
        training: draw the context noise level from [mci.min, mci.max] per block instead of mci.sigma.
        max_records: keep only the newest this many BlockRecords, so an endless stream stays bounded.
    """

    def __init__(self, model: torch.nn.Module, options: RolloutOptions, training: bool = False,
                 max_records: int | None = 4096):
        self.model = model
        self.options = options
        self.training = training
        self.records: deque[BlockRecord] = deque(maxlen=max_records)
        self.cache: KVCache | None = None
        self._history: deque[_HistoryFrame] = deque()
        self._schedules: dict[int, torch.Tensor] = {}
        self._sigma_lists: dict[int, list[float]] = {}
        self._block = 0
        self._next_frame = 0
        self.max_position_seen = -1
        self.text: torch.Tensor | None = None  # the prompt the cache's text state holds (None: the null text)
        self.negative_text: torch.Tensor | None = None
        self.text_guidance = 1.0  # 1: one forward per step, under `text` (what the student was distilled for)
        self._batch = 1

    def begin(self, ref: torch.Tensor | None, text: torch.Tensor | None, batch: int, latent_hw: tuple[int, int],
              generator: torch.Generator | None = None, cache: KVCache | None = None) -> None:
        """Start a stream: a cache holding the reference sink and the text state.

        cache: a finished stream's cache of the same geometry to start in (its buffers, and so the CUDA
            graphs captured on them, are reused); default a fresh one.
        """
        h, w = latent_hw
        p = self.model.config.patch_size
        # the scratch holds what one forward brings: a block, or the frames re-encoded at a URCR reset
        scratch = max(self.options.frames_per_block, self.options.urcr.keep_frames if self.options.urcr.enabled else 0)
        fresh = self.model.new_cache(self.options.window, h, w, block_frames=scratch)
        if cache is not None:
            geometry = ("num_layers", "capacity", "tokens_per_frame", "block_frames")
            if any(getattr(cache, name) != getattr(fresh, name) for name in geometry):
                raise ValueError("Rollout.begin(cache=...): the cache was made for another window, frame size or "
                                 "block size")
            cache.restart()
            fresh = cache
        self.cache = fresh
        self.text, self._batch = text, batch
        self._sink = (ref, h // p[1], w // p[2])  # what set_text re-encodes under a new prompt
        self.model.prefill(self.cache, ref, text, batch, h // p[1], w // p[2])
        self.generator = generator
        self.records.clear()
        self._history.clear()
        self._block = self._next_frame = 0
        self.max_position_seen = -1

    def set_text(self, text: torch.Tensor | None) -> None:
        """A new prompt from the next block on: the cached text state and the reference sink are re-filled in
        place (AvatarDiT.prefill, as a stream started on this prompt has them; the sink is never evicted, so
        it would otherwise keep the old prompt forever); the context frames, positions and URCR schedule stay
        as they are (no reset, no break in motion; the context made under the old prompt leaves the window).

        Args:
            text: prompt embeddings [B, L, text_dim]; None: the learned null text.
        """
        self.text = text
        ref, hh, ww = self._sink
        self.model.prefill(self.cache, ref, text, self._batch, hh, ww)

    def set_text_guidance(self, scale: float, negative: torch.Tensor | None = None) -> None:
        """Guide each denoising step away from `negative`: v = v_neg + scale (v - v_neg), the negative forward
        run on the same cache with its text state swapped in place (set_text) and swapped back, so the
        context is written under the prompt alone. An approximation of text CFG: the negative branch reads
        the context made under the prompt. scale 1 turns it off (one forward per step).

        Args:
            scale: text guidance scale (1: off).
            negative: negative prompt embeddings [B, L, text_dim]; None: the learned null text.
        """
        self.text_guidance, self.negative_text = float(scale), negative

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, positions: list[int], block_audio) -> torch.Tensor:
        v = self.model.forward_cached(x, t, positions, self.cache, block_audio)
        if self.text_guidance == 1.0:
            return v
        self.model.set_text(self.cache, self.negative_text, self._batch)
        try:
            v_negative = self.model.forward_cached(x, t, positions, self.cache, block_audio)
        finally:
            self.model.set_text(self.cache, self.text, self._batch)
        return v_negative + self.text_guidance * (v - v_negative)

    def sigmas_for(self, block: int) -> torch.Tensor:
        n = self.options.psb.steps_for(block)
        if n not in self._schedules:
            steps = self.options.psb.steps
            self._schedules[n] = psb_levels(steps, self.options.shift)[psb_level_indices(steps, n)]
        return self._schedules[n]

    def _sigma_values(self, block: int) -> list[float]:
        n = self.options.psb.steps_for(block)
        if n not in self._sigma_lists:
            self._sigma_lists[n] = [float(s) for s in self.sigmas_for(block)]
        return self._sigma_lists[n]

    def _context_sigma(self) -> float:
        mci = self.options.mci
        if not mci.enabled:
            return 0.0
        if not self.training:
            return mci.sigma
        device = self.generator.device if self.generator is not None else None
        u = torch.rand((), generator=self.generator, device=device).item()
        return mci.min + (mci.max - mci.min) * u

    def _randn_like(self, x: torch.Tensor) -> torch.Tensor:
        # The generator (if any) lives on the model's device, so streams are reproducible per device.
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def _write_context(self, frames: list[_HistoryFrame], positions: list[int], sigma: float,
                       block_audio=None) -> None:
        """One forward at timestep sigma over the (noised) frames, storing their keys/values (block_audio:
        the frames' audio with its K/V already computed, when they are the block just denoised)."""
        latents = torch.cat([f.latent for f in frames], dim=2)
        audio = None if frames[0].audio is None else torch.cat([f.audio for f in frames], dim=1)
        audio = block_audio if block_audio is not None else audio
        if sigma > 0:
            latents = (1 - sigma) * latents + sigma * self._randn_like(latents)
        t = torch.full((latents.shape[0],), 1000.0 * sigma, device=latents.device)
        self.max_position_seen = max(self.max_position_seen, max(positions))
        # positions stay Python ints: no host-to-device copy, the RoPE table comes from the model's cache
        self.model.forward_cached(latents, t, positions, self.cache, audio, write_frames=[f.index for f in frames],
                                  write_only=True)

    def _positions(self) -> tuple[list[int], bool]:
        """The next block's RoPE positions and whether URCR resets the cache first (CausalGrid.block_positions)."""
        urcr = self.options.urcr
        grid = CausalGrid(self.options.frames_per_block)
        return grid.block_positions(self._block, urcr.max_frames if urcr.enabled else None, urcr.keep_frames)

    def _reset(self) -> None:
        """URCR: forget the context, re-encode the last keep_frames frames at positions 0.. (the grid's count)."""
        keep = self.options.urcr.keep_frames
        self.cache.clear_frames()
        kept = list(self._history)[-keep:] if keep else []
        if len(kept) != keep:
            raise RuntimeError(f"URCR reset with {len(kept)} history frames, {keep} to keep")
        if kept:
            with torch.no_grad():
                self._write_context(kept, list(range(len(kept))), self._context_sigma())

    def next_block(self, audio_tokens: torch.Tensor | None, noise: torch.Tensor | None = None,
                   exit_step: int | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Generate the next block of clean latents [B,C,frames_per_block,h,w].

        Args:
            audio_tokens: the block's projected audio tokens [B,fpb,A,D] (model.audio_tokens), or None.
            noise: the starting noise; default drawn with `shape`.
            exit_step: training: the step whose x0 prediction is returned, with gradient; the steps before
                it run without gradient. None: all steps (inference).
            shape: [B,C,fpb,h,w] when noise is not given.
        """
        fpb = self.options.frames_per_block
        positions, reset = self._positions()
        if reset:
            self._reset()
        self.max_position_seen = max(self.max_position_seen, positions[-1])
        device = self.model.null_text.device
        x = noise.to(device) if noise is not None else torch.randn(shape, generator=self.generator, device=device)
        sigmas = self._sigma_values(self._block)  # Python floats: the step loop reads no tensor value
        block_audio = self.model.block_audio(audio_tokens)  # audio K/V once for all of this block's forwards
        steps = len(sigmas) - 1
        last = steps - 1 if exit_step is None else min(exit_step, steps - 1)
        x0 = x
        for j in range(last + 1):
            s, s_next = sigmas[j], sigmas[j + 1]
            t = torch.full((x.shape[0],), 1000.0 * s, device=x.device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and j == last and exit_step is not None):
                v = self._velocity(x, t, positions, block_audio)
            x0 = x - s * v
            if j == last:
                break
            if self.options.sampler == "euler":
                x = x + (s_next - s) * v
            else:
                x = (1 - s_next) * x0 + s_next * self._randn_like(x0)
        # Context write: the block's clean output, noised to the MCI level, without gradient.
        sigma_m = self._context_sigma()
        new_frames = []
        for k in range(fpb):
            frame = _HistoryFrame(
                latent=x0[:, :, k:k + 1].detach(),
                audio=None if audio_tokens is None else audio_tokens[:, k:k + 1].detach(),
                index=self._next_frame + k,
            )
            new_frames.append(frame)
            self._history.append(frame)
        keep = max(self.options.urcr.keep_frames, self.options.window)
        while len(self._history) > keep:
            self._history.popleft()
        with torch.no_grad():
            self._write_context(new_frames, positions, sigma_m, block_audio)
        per_step = 1 if self.text_guidance == 1.0 else 2
        self.records.append(BlockRecord(self._block, positions, [float(s) for s in sigmas[: last + 2]],
                                        sigma_m, reset, forwards=per_step * (last + 1) + 1))
        self._block += 1
        self._next_frame += fpb
        return x0
