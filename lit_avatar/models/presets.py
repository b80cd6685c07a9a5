"""Named model sizes. The backbone fields mirror Wan2.1; the avatar fields size the audio and reference paths."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lit_avatar.errors import UserError


@dataclass(frozen=True)
class DiTConfig:
    """Shape of an AvatarDiT.

    Args:
        dim: hidden size (num_heads * head_dim).
        num_layers: transformer blocks.
        num_heads: attention heads.
        ffn_dim: feed-forward hidden size.
        freq_dim: sinusoidal timestep embedding size.
        text_dim: width of the (optional) text embeddings, 4096 for umT5-XXL.
        in_channels: latent channels in (VAE latent_channels).
        out_channels: latent channels out.
        patch_size: (t, h, w) patch; t must be 1 for the reference sink and per-frame timesteps.
        eps: norm epsilon.
        cross_attn_norm: affine LayerNorm before the text cross-attention (Wan: True).
        rope_theta: RoPE base.
        audio: build the frame-local audio cross-attention and the projector.
        audio_feature_dim: width D of one audio feature frame (AudioEncoder.feature_dim).
        audio_window: frames per audio window W (+-2 -> 5).
        audio_tokens: audio tokens per latent frame.
        audio_dim: width of the audio tokens.
        audio_hidden_dim: hidden width of the projector MLP.
        temporal_factor: video frames per latent frame (VideoVAE.temporal_factor), used to group audio.
        ref_position: the fixed RoPE time index of the reference sink.
        null_text_tokens: learned tokens used when no text embedding is given.
        gradient_checkpointing: recompute block activations in backward to save memory.
    """

    dim: int = 1536
    num_layers: int = 30
    num_heads: int = 12
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    audio: bool = True
    audio_feature_dim: int = 768
    audio_window: int = 5
    audio_tokens: int = 32
    audio_dim: int = 768
    audio_hidden_dim: int = 512
    temporal_factor: int = 4
    ref_position: int = -1
    null_text_tokens: int = 1
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise UserError(f"model config: dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise UserError(f"model config: head dim {self.dim // self.num_heads} must be even for RoPE")
        if tuple(self.patch_size)[0] != 1:
            raise UserError(f"model config: patch_size[0] must be 1 (per-frame timesteps), got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def replace(self, **overrides: Any) -> DiTConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"model config: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(names))}")
        if "patch_size" in overrides:
            overrides["patch_size"] = tuple(overrides["patch_size"])
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, DiTConfig] = {
    # Unit tests: a few hundred thousand parameters.
    "micro": DiTConfig(
        dim=32, num_layers=2, num_heads=2, ffn_dim=64, freq_dim=32, text_dim=16, in_channels=12,
        out_channels=12, audio_feature_dim=16, audio_tokens=2, audio_dim=32, audio_hidden_dim=32,
        temporal_factor=1,
    ),
    # Tests of the 1.3B recipes: the micro backbone with the shapes of the tiny Wan VAE (16 latent channels,
    # 4x temporal) and tiny wav2vec2 (2 layers x 16, layers "all") that tests/test_recipes_fsdp.py writes.
    "micro-wan": DiTConfig(
        dim=32, num_layers=2, num_heads=2, ffn_dim=64, freq_dim=32, text_dim=16, audio_feature_dim=32,
        audio_tokens=2, audio_dim=32, audio_hidden_dim=32,
    ),
    # CPU experiments on SynthTalk with PatchVAE(spatial_factor=2): the 1.6M prototype of DESIGN.md.
    "tiny": DiTConfig(
        dim=128, num_layers=4, num_heads=4, ffn_dim=384, freq_dim=64, text_dim=32, in_channels=12,
        out_channels=12, audio_feature_dim=40, audio_tokens=4, audio_dim=128, audio_hidden_dim=128,
        temporal_factor=1,
    ),
    # Backbone identical to Wan2.1-T2V-1.3B; wav2vec2-base features, all 12 hidden layers stacked.
    "wan2.1-1.3b": DiTConfig(audio_feature_dim=12 * 768),
    "wan2.1-14b": DiTConfig(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824, audio_feature_dim=12 * 768),
}


def get_preset(name: str, **overrides: Any) -> DiTConfig:
    """The named config, with field overrides applied (unknown names are errors)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
