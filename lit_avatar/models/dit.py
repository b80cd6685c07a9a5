"""AvatarDiT: the Wan2.1 DiT with frame-local audio cross-attention and a reference sink.

Tokens are kept grouped by latent frame ([B, F, N, dim]) so that per-frame timesteps (motion
prefix, block-wise denoising), frame-local audio attention and the KV cache are plain reshapes.
The reference latent is one extra frame of tokens at a fixed RoPE time index: it attends only
to itself (so its keys can be computed once and cached) while every video token attends to it.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_avatar.models.attention import (
    CausalWindow,
    CrossAttention,
    FixedOutput,
    FrameLocalCrossAttention,
    KVCache,
    SelfAttention,
)
from lit_avatar.models.presets import DiTConfig, get_preset
from lit_avatar.models.rope import RotaryEmbedding3D

ROPE_TABLES_KEPT = 64  # distinct position tuples whose RoPE tables stay cached (URCR cycles through a few)


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """[...] -> [..., dim] as [cos | sin], computed in float32 like diffusers' Timesteps(flip_sin_to_cos=True)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[..., None] * torch.exp(exponent)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


@dataclass
class ClipConditions:
    """What AvatarDiT scores a clip under: windowed audio features, reference latent, text.

    Null values (for CFG) follow INTERFACES.md: zeros for audio and reference, None for text.
    """

    audio: torch.Tensor | None
    ref: torch.Tensor | None
    text: torch.Tensor | None

    def as_kwargs(self) -> dict[str, Any]:
        return {"audio": self.audio, "ref": self.ref, "text": self.text}

    def without_audio(self, drop_ref: bool = False, drop_text: bool = False) -> ClipConditions:
        """The 'unconditional' side of audio guidance (optionally dropping reference and text as well)."""
        audio = None if self.audio is None else torch.zeros_like(self.audio)
        ref = self.ref if not drop_ref or self.ref is None else torch.zeros_like(self.ref)
        return ClipConditions(audio, ref, None if drop_text else self.text)


def _several_ranks() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


@dataclass
class BlockAudio:
    """A block's audio tokens [B,F,A,audio_dim] and every layer's audio K/V of them, stacked
    [layers, 2, B*F, A, H, hd] (one tensor: a CUDA graph's static copy is one kernel)."""

    tokens: torch.Tensor
    kv: torch.Tensor


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the parameter dtype (bf16 training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class AvatarBlock(nn.Module):
    """One Wan block (self-attn, text cross-attn, FFN, all timestep-modulated) plus audio cross-attn."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, eps=cfg.eps)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        if cfg.audio:
            self.norm_audio = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True)
            self.audio_attn = FrameLocalCrossAttention(dim, cfg.num_heads, cfg.audio_dim, cfg.eps)

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | FixedOutput:
        """This layer's text state of the embedded text context [B,L,dim], computed once per stream when
        cached: the K/V, or the cross-attention output itself for a one-token text (the null text).
        A method of the block, not of its cross-attention, so that a sharded block can register it as an
        FSDP forward method and have its parameters gathered for the call (as audio_kv and write_kv)."""
        return self.cross_attn.context_state(context)

    def audio_kv(self, audio: torch.Tensor) -> torch.Tensor:
        """This layer's audio K/V [2,B*F,A,H,hd] of a block's audio tokens [B,F,A,audio_dim]: once per
        block, not in each of its denoising forwards."""
        return self.audio_attn.frames_kv(audio)

    def write_kv(self, x: torch.Tensor, e: torch.Tensor,
                 rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the self-attention keys/values of x (what the last layer of a cache-write forward is for:
        its attention output, cross-attention and FFN would feed a head whose output nobody reads)."""
        shift, scale = (self.modulation[:, :2].unsqueeze(0) + e[:, :, :2].float()).unsqueeze(3).unbind(2)
        h = (self.norm1(x) * (1 + scale) + shift).type_as(x)
        return self.self_attn.keys_values(h.flatten(1, 2), rope)

    def _text_attention(self, x: torch.Tensor, text_kv) -> torch.Tensor:
        if isinstance(text_kv, FixedOutput):  # the same vector for every query: nothing to compute
            return text_kv.value.unsqueeze(1)
        b, f, n, d = x.shape
        return self.cross_attn(self.norm3(x.flatten(1, 2)).type_as(x), text_kv).view(b, f, n, d)

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        text_kv: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
        audio: torch.Tensor | None = None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: CausalWindow | None = None,
        kv_buffer: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_window: tuple[int, int, int] | None = None,
        audio_kv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B,F,N,dim], e [B,F,6,dim] (time projection per frame), audio [B,F,A,audio_dim] or None.

        text_kv: this layer's cached text K/V, or the embedded text context [B,L,dim] whose K/V the block
            computes itself (the full-sequence forward: inside the block's forward its parameters are
            gathered when it is sharded).
        causal: block-causal windowed self-attention over x (None: full; see CausalWindow).
        kv_buffer and kv_window: the KV-cached path (SelfAttention.forward).
        audio_kv: this layer's audio_kv(audio), when the caller computed it once for several forwards.

        Returns the new x and this layer's self-attention keys/values of x (for the cache).
        """
        if isinstance(text_kv, torch.Tensor):  # not self.text_kv: as an FSDP forward method it would reshard here
            text_kv = self.cross_attn.context_kv(text_kv)
        b, f, n, d = x.shape
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.unsqueeze(0) + e.float()).unsqueeze(3).unbind(2)
        h = (self.norm1(x) * (1 + scale) + shift).type_as(x)
        attn, k, v = self.self_attn(h.flatten(1, 2), rope, prefix, causal, kv_buffer, kv_window)
        x = (x.float() + attn.view(b, f, n, d) * gate).type_as(x)
        x = x + self._text_attention(x, text_kv)
        if audio is not None:
            x = x + self.audio_attn.forward_frames(self.norm_audio(x).type_as(x), audio, audio_kv)
        h = (self.norm2(x) * (1 + c_scale) + c_shift).type_as(x)
        x = (x.float() + self.ffn(h).float() * c_gate).type_as(x)
        return x, k, v


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.unsqueeze(0) + temb.float().unsqueeze(2)).unsqueeze(3).unbind(2)
        return self.head((self.norm(x) * (1 + scale) + shift).type_as(x))


class AvatarDiT(nn.Module):
    """Audio-driven DiT; bidirectional and block-causal modes share one set of weights.

    Args:
        preset: a name from lit_avatar.models.presets.PRESETS.
        overrides: DiTConfig fields to change (e.g. {"in_channels": 48}); unknown keys are errors.
        weights: optional Wan2.1 checkpoint (diffusers folder or original-layout safetensors) to load.
        config: a full DiTConfig; takes precedence over preset/overrides (for code, not YAML).
    """

    def __init__(
        self,
        preset: str = "tiny",
        overrides: dict[str, Any] | None = None,
        weights: str | None = None,
        config: DiTConfig | None = None,
    ):
        super().__init__()
        cfg = config if config is not None else get_preset(preset, **(overrides or {}))
        self.config = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([AvatarBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.null_text = nn.Parameter(torch.zeros(1, cfg.null_text_tokens, cfg.text_dim))
        self.rope = RotaryEmbedding3D(cfg.head_dim, cfg.rope_theta)
        if cfg.audio:
            from lit_avatar.models.audio import AudioProjector

            self.audio_projector = AudioProjector(
                feature_dim=cfg.audio_feature_dim,
                window=cfg.audio_window,
                temporal_factor=cfg.temporal_factor,
                audio_tokens=cfg.audio_tokens,
                dim=cfg.audio_dim,
                hidden_dim=cfg.audio_hidden_dim,
            )
        if weights is not None and self.patch_embedding.weight.device.type != "meta":
            from lit_avatar.models.wan_compat import load_wan_weights

            load_wan_weights(self, weights)

    # ----- building blocks shared by every mode -----

    def embed_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """[B,C,F,H,W] -> tokens [B,F,N,dim]."""
        x = self.patch_embedding(latents.to(self.patch_embedding.weight.dtype))
        # contiguous: a compiled block's stride guards would otherwise split layer 0 from the others
        return x.flatten(3).permute(0, 2, 3, 1).contiguous()

    def time_embed(self, timestep: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] or [B,F] -> (temb [B,F,dim], e [B,F,6,dim])."""
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(-1, frames)
        dtype = self.time_embedding[0].weight.dtype
        temb = self.time_embedding(sinusoidal_embedding(timestep, self.config.freq_dim).to(dtype))
        return temb, self.time_projection(temb).unflatten(-1, (6, -1))

    def text_context(self, text: torch.Tensor | None, batch: int) -> torch.Tensor:
        if text is None:
            text = self.null_text.expand(batch, -1, -1)
        elif self.null_text.requires_grad and torch.is_grad_enabled() and _several_ranks():
            # FSDP2 (and DDP) reduce the gradients of the parameters each rank used: a rank whose batch has text
            # gives the null text a zero gradient, as the ranks that dropped text (or had no captions) give it one
            text = text + self.null_text.sum() * 0
        return self.text_embedding(text.to(self.null_text.dtype))

    def audio_tokens(self, audio: torch.Tensor | None, starts_at_zero: bool = True) -> torch.Tensor | None:
        """Windowed audio features [B,T,W,D] -> tokens [B,F,A,audio_dim] (None passes through)."""
        return self._project_audio(audio, starts_at_zero)

    def _project_audio(self, audio: torch.Tensor | None, starts_at_zero: bool = True) -> torch.Tensor | None:
        # audio_tokens is an FSDP forward method when sharded; forward() calls this, which is not
        if audio is None or not self.config.audio:
            return None
        return self.audio_projector(audio.to(self.null_text.dtype), starts_at_zero=starts_at_zero)

    def unpatchify(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B,F,N,C*p] -> [B,C,F,H,W]."""
        b, f = x.shape[:2]
        pt, ph, pw = self.config.patch_size
        hh, ww = height // ph, width // pw
        x = x.reshape(b, f, hh, ww, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _run_block(self, block: AvatarBlock, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.config.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # ----- full-sequence forward: bidirectional teacher or block-causal training -----

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        audio: torch.Tensor | None = None,
        ref: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        frames_per_block: int | None = None,
        frame_positions: torch.Tensor | None = None,
        window: int | None = None,
        context: torch.Tensor | None = None,
        context_timestep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity prediction for a whole clip.

        Args:
            x: noisy latents [B,C,F,H,W].
            timestep: [B] or per-frame [B,F], in [0, 1000].
            audio: windowed audio features [B,T,W,D] for the clip, T = 1 + temporal_factor*(F-1); None skips the path.
            ref: reference latent [B,C,1,H,W]; None skips the sink.
            text: text embeddings [B,L,text_dim]; None uses the learned null embedding.
            frames_per_block: when set, block-causal attention: a block sees its own frames and the `window`
                frames before it (CausalWindow), as the rollout's KV cache does.
            frame_positions: RoPE time index per frame [F] (default 0..F-1).
            window: context frames each block sees (the rollout's `window`); None: every earlier frame.
            context: teacher-forced context [B,C,F,H,W]: the clip as the cache holds it (clean, or noised to the
                MCI level); block-causal only. Blocks of x then read their context from it, not from x, exactly
                as a block of the rollout reads the cache (its frames of the last block are never read).
            context_timestep: the context's timestep, [B] or per-frame [B,F].
        """
        b, _, f, height, width = x.shape
        fpb = frames_per_block
        c = 0 if context is None or fpb is None else fpb * ((f - 1) // fpb)  # context frames anyone reads
        if frame_positions is None:
            frame_positions = torch.arange(f, device=x.device)
        temb, e = self.time_embed(timestep, f)
        audio_tok = self._project_audio(audio)
        if audio_tok is not None and audio_tok.shape[1] != f:
            raise ValueError(f"audio gives {audio_tok.shape[1]} latent frames, video has {f}")
        if c:  # [context copy | x]: one sequence, one pass
            x = torch.cat([context[:, :, :c], x], dim=2)
            ctx_t = torch.zeros(b, device=x.device) if context_timestep is None else context_timestep
            ctx_t = ctx_t if ctx_t.ndim == 1 else ctx_t[:, :c]
            ctx_temb, ctx_e = self.time_embed(ctx_t, c)
            temb, e = torch.cat([ctx_temb, temb], dim=1), torch.cat([ctx_e, e], dim=1)
            frame_positions = torch.cat([frame_positions[:c], frame_positions])
            audio_tok = None if audio_tok is None else torch.cat([audio_tok[:, :c], audio_tok], dim=1)
        tokens = self.embed_frames(x)
        n = tokens.shape[2]
        hh, ww = height // self.config.patch_size[1], width // self.config.patch_size[2]
        rope = self.rope(frame_positions, hh, ww)
        text_ctx = self.text_context(text, b)
        causal = CausalWindow(n, fpb, window, c) if fpb is not None else None
        ref_state = self._ref_init(ref, b, hh, ww) if ref is not None else None
        for block in self.blocks:
            prefix = None
            if ref_state is not None:
                ref_x, ref_e, ref_rope = ref_state
                ref_x, rk, rv = self._run_block(block, ref_x, ref_e, ref_rope, text_ctx)
                ref_state = (ref_x, ref_e, ref_rope)
                prefix = (rk, rv)
            tokens, _, _ = self._run_block(block, tokens, e, rope, text_ctx, audio_tok, prefix, causal)
        return self.unpatchify(self.head(tokens[:, c:], temb[:, c:]), height, width).float()

    def _ref_init(self, ref: torch.Tensor, batch: int, hh: int, ww: int):
        ref_x = self.embed_frames(ref)
        _, ref_e = self.time_embed(torch.zeros(batch, device=ref.device), 1)
        positions = torch.tensor([self.config.ref_position], device=ref.device)
        return ref_x, ref_e, self.rope(positions, hh, ww)

    # ----- KV-cached incremental forward: causal streaming -----

    def new_cache(self, capacity: int, latent_height: int, latent_width: int, block_frames: int = 0) -> KVCache:
        n = (latent_height // self.config.patch_size[1]) * (latent_width // self.config.patch_size[2])
        return KVCache(num_layers=self.config.num_layers, capacity=capacity, tokens_per_frame=n,
                       block_frames=block_frames)

    def rope_table(self, positions: Sequence[int], hh: int, ww: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) of frames at `positions`, cached: URCR keeps positions bounded, so a stream
        cycles through a handful of tuples and never rebuilds a table in steady state."""
        tables = self.__dict__.setdefault("_rope_tables", OrderedDict())
        key = (tuple(int(p) for p in positions), hh, ww, str(device))
        table = tables.get(key)
        if table is None:
            # positions go host -> device without a blocking copy (only on a table miss, a few per stream);
            # a normal tensor even inside inference_mode, so training may reuse it after validation sampling
            with torch.inference_mode(False), torch.no_grad():
                table = self.rope(torch.tensor(key[0]).to(device, non_blocking=True), hh, ww)
            tables[key] = table
            if len(tables) > ROPE_TABLES_KEPT:
                tables.popitem(last=False)
        else:
            tables.move_to_end(key)
        return table

    @torch.no_grad()
    def prefill(self, cache: KVCache, ref: torch.Tensor | None, text: torch.Tensor | None,
                batch: int, hh: int, ww: int) -> None:
        """Compute the text state and the reference sink's keys/values once per stream."""
        self.set_text(cache, text, batch)
        ref_state = self._ref_init(ref, batch, hh, ww) if ref is not None else None
        for i, block in enumerate(self.blocks):
            layer = cache.layers[i]
            if ref_state is not None:
                ref_x, ref_e, ref_rope = ref_state
                ref_x, ref_k, ref_v = block(ref_x, ref_e, ref_rope, layer.text_kv)
                cache.set_sink(i, ref_k, ref_v)
                ref_state = (ref_x, ref_e, ref_rope)

    @torch.no_grad()
    def set_text(self, cache: KVCache, text: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(Re)fill every layer's text state in the cache (the null text's cross-attention output, or a
        prompt's K/V); a prompt change mid-stream calls this, and a text of the same shape is written into
        the same buffers (KVCache.set_text). The reference sink is not recomputed. Returns the embedded text."""
        text_ctx = self.text_context(text, batch)
        for i, block in enumerate(self.blocks):
            cache.set_text(i, block.text_kv(text_ctx))
        return text_ctx

    def block_audio(self, audio_tokens: torch.Tensor | None) -> BlockAudio | None:
        """A block's audio tokens with every layer's audio K/V computed once, for all of its forwards."""
        if audio_tokens is None or not self.config.audio:
            return None
        return BlockAudio(audio_tokens, torch.stack([block.audio_kv(audio_tokens) for block in self.blocks]))

    def forward_cached(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        frame_positions: torch.Tensor | Sequence[int],
        cache: KVCache,
        audio_tokens: torch.Tensor | BlockAudio | None = None,
        write_frames: list[int] | None = None,
        write_only: bool = False,
    ) -> torch.Tensor | None:
        """Velocity for one block given the cached context.

        Without gradient, each layer writes its keys/values into the cache's scratch and attends over
        one contiguous slice of the cache (no per-layer concatenation, no mask: fused SDPA kernels);
        with gradient (the exit step of Self-Forcing training) it attends over [cache view | own k/v]
        instead, so the cache buffers never enter the autograd graph.

        Args:
            x: the block's latents [B,C,F,H,W].
            timestep: [B] or [B,F].
            frame_positions: RoPE time index of each of the F frames; Python ints avoid any host-device
                round trip (a tensor is read with .tolist()).
            cache: filled by prefill() and earlier writes.
            audio_tokens: the block's projected audio tokens [B,F,A,audio_dim] (see audio_tokens()), or
                block_audio() of them (their K/V computed once for all of a block's forwards).
            write_frames: absolute frame indices; when given, this forward's keys/values are stored.
            write_only: a cache write whose velocity is not wanted: the last layer stops at its keys/values,
                the head does not run, and None is returned.
        """
        b, _, f, height, width = x.shape
        if isinstance(frame_positions, torch.Tensor):
            frame_positions = frame_positions.tolist()
        tokens = self.embed_frames(x)
        hh, ww = height // self.config.patch_size[1], width // self.config.patch_size[2]
        rope = self.rope_table(frame_positions, hh, ww, tokens.device)
        temb, e = self.time_embed(timestep, f)
        # The context is fixed before this forward reserves slots: a block never sees its own write.
        end = cache.context_end()
        slots = cache.reserve_slots(write_frames, list(frame_positions)) if write_frames is not None else None
        fused = not torch.is_grad_enabled()
        heads_like = tokens.flatten(1, 2).unflatten(-1, (self.config.num_heads, -1))  # a view: k's shape and dtype
        audio, audio_kv = (audio_tokens.tokens, audio_tokens.kv) if isinstance(audio_tokens, BlockAudio) else \
            (audio_tokens, None)
        last = len(self.blocks) - 1 if write_only and slots is not None else None
        for i, block in enumerate(self.blocks):
            text_kv, layer_audio_kv = cache.layers[i].text_kv, None if audio_kv is None else audio_kv[i]
            if i == last:
                k, v = block.write_kv(tokens, e, rope)
            elif fused:
                kv_buffer, kv_window = cache.attention_window(i, heads_like, end)
                tokens, k, v = block(tokens, e, rope, text_kv, audio, kv_buffer=kv_buffer, kv_window=kv_window,
                                     audio_kv=layer_audio_kv)
            else:
                tokens, k, v = block(tokens, e, rope, text_kv, audio, cache.context(i, end), audio_kv=layer_audio_kv)
            if slots is not None:
                cache.write(i, slots, k, v)
        if last is not None:
            return None
        return self.unpatchify(self.head(tokens, temb), height, width).float()


def block_causal_mask(frames: int, tokens_per_frame: int, frames_per_block: int, prefix_tokens: int = 0,
                      device: torch.device | None = None) -> torch.Tensor:
    """[F*N, prefix+F*N] bool: a token sees the prefix and every token whose block is not later than its own."""
    block = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame) // frames_per_block
    video = block[:, None] >= block[None, :]
    if prefix_tokens:
        video = torch.cat([torch.ones(video.shape[0], prefix_tokens, dtype=torch.bool, device=device), video], dim=1)
    return video
