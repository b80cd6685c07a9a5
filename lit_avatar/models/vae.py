"""Video autoencoders behind one protocol: the Wan VAE for real runs, a lossless patch VAE for CPU runs.

Both follow Wan's causal temporal convention: T video frames = 1 + temporal_factor * (t - 1) latent
frames, frame 0 alone in latent 0. Only torch is imported here; diffusers is imported when a WanVAE is
built, so `lit_avatar.models` imports on machines without it.
"""

from __future__ import annotations

import json
import os
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from lit_avatar.errors import UserError

__all__ = ["PatchVAE", "VideoVAE", "WanVAE", "latent_frames", "video_frames"]

DTypeName = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@runtime_checkable
class VideoVAE(Protocol):
    """What the modules and the rollout expect from a video autoencoder (docs/INTERFACES.md)."""

    latent_channels: int
    temporal_factor: int
    spatial_factor: int

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def latent_frames(num_frames: int, temporal_factor: int) -> int:
    """Latent frames t for T video frames under the causal convention T = 1 + tf*(t-1).

    Args:
        num_frames: T.
        temporal_factor: tf.
    """
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(
            f"{num_frames} video frames do not fit the causal latent grid: expected T = 1 + {temporal_factor}*(t-1)"
        )
    return 1 + (num_frames - 1) // temporal_factor


def video_frames(num_latent_frames: int, temporal_factor: int) -> int:
    """Video frames T = 1 + tf*(t-1) that t latent frames decode to.

    Args:
        num_latent_frames: t.
        temporal_factor: tf.
    """
    return 1 + temporal_factor * (num_latent_frames - 1)


def _check_video(video: torch.Tensor, spatial_factor: int) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, T, H, W], got shape {tuple(video.shape)}")
    height, width = video.shape[-2:]
    if height % spatial_factor or width % spatial_factor:
        raise ValueError(f"video size {height}x{width} is not divisible by the VAE's spatial factor {spatial_factor}")


# ----------------------------------------------------------------------------------------------- patch VAE


class PatchVAE(nn.Module):
    """Lossless stand-in for a VAE: pixel unshuffle in space, optional grouping of frames in time.

    A latent holds the 3 * tf * sf * sf pixel values of its (tf, sf, sf) cell, channel order (rgb, time,
    row, column). Frame 0 is repeated tf times to fill latent 0, matching Wan's causal layout, so models
    and the rollout see the same geometry as with the real VAE at CPU cost and with no reconstruction
    error of its own. `scale` multiplies the latents: video in [-1, 1] has a standard deviation near
    0.5, so scale 2.0 gives roughly unit-variance latents; powers of two keep the round trip exact.

    Args:
        spatial_factor: pixels per latent side (sf).
        temporal_factor: video frames per latent frame (tf); 1 keeps every frame.
        scale: latents = scale * pixels.
    """

    def __init__(self, spatial_factor: int = 2, temporal_factor: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        if spatial_factor < 1 or temporal_factor < 1:
            raise UserError(
                f"PatchVAE spatial_factor={spatial_factor}, temporal_factor={temporal_factor}: expected >= 1"
            )
        if scale <= 0:
            raise UserError(f"PatchVAE scale={scale}: expected > 0")
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.scale = scale
        self.latent_channels = 3 * temporal_factor * spatial_factor**2

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> latents [B, C, t, H/sf, W/sf], T = 1 + tf*(t-1).

        Args:
            video: pixels.
        """
        _check_video(video, self.spatial_factor)
        tf, sf = self.temporal_factor, self.spatial_factor
        latent_frames(video.shape[2], tf)  # validates T
        video = torch.cat([video[:, :, :1].expand(-1, -1, tf - 1, -1, -1), video], dim=2)
        batch, _, frames, height, width = video.shape
        t, h, w = frames // tf, height // sf, width // sf
        cells = video.reshape(batch, 3, t, tf, h, sf, w, sf).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return cells.reshape(batch, self.latent_channels, t, h, w) * self.scale

    def decode(self, latents: torch.Tensor, starts_at_zero: bool = True) -> torch.Tensor:
        """Latents [B, C, t, h, w] -> video [B, 3, T, h*sf, w*sf].

        Args:
            latents: as produced by `encode`.
            starts_at_zero: latent 0 is the causal first latent (decodes to 1 frame, T = 1 + tf*(t-1));
                False for a later streaming chunk (T = tf*t).
        """
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, t, h, w], got shape {tuple(latents.shape)}"
            )
        tf, sf = self.temporal_factor, self.spatial_factor
        batch, _, t, h, w = latents.shape
        cells = (latents / self.scale).reshape(batch, 3, tf, sf, sf, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        video = cells.reshape(batch, 3, t * tf, h * sf, w * sf)
        # frame 0 is the last slot of latent 0 (latent j covers frames tf*j-(tf-1)..tf*j)
        return video[:, :, tf - 1 :] if starts_at_zero else video

    def stream_decoder(self) -> PatchStreamDecoder:
        """A decoder for consecutive latent chunks whose outputs concatenate to `decode` of the whole."""
        return PatchStreamDecoder(self)


class PatchStreamDecoder:
    """Chunk-by-chunk decoding for PatchVAE (stateless apart from knowing whether frame 0 is done).

    Args:
        vae: the PatchVAE.
    """

    def __init__(self, vae: PatchVAE) -> None:
        self.vae = vae
        self.started = False

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk of latent frames [B, C, n, h, w].

        Args:
            latents: the chunk.
        """
        video = self.vae.decode(latents, starts_at_zero=not self.started)
        self.started = True
        return video

    def reset(self) -> None:
        """Start a new video."""
        self.started = False


# ------------------------------------------------------------------------------------------------- Wan VAE


def _resolve_wan_dir(path: str, subfolder: str | None) -> str:
    """The folder holding the VAE's config.json; a pipeline root with a vae/ subfolder is accepted."""
    if not os.path.isdir(path):
        raise UserError(f"Wan VAE folder {path!r} does not exist (expected a local AutoencoderKLWan folder)")
    folder = os.path.join(path, subfolder) if subfolder else path
    if not subfolder and not os.path.isfile(os.path.join(folder, "config.json")):
        if os.path.isfile(os.path.join(path, "vae", "config.json")):
            folder = os.path.join(path, "vae")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"Wan VAE folder {folder!r} has no config.json (expected an AutoencoderKLWan folder)")
    with open(config_path) as handle:
        name = json.load(handle).get("_class_name")
    if name not in (None, "AutoencoderKLWan"):
        raise UserError(f"{config_path}: _class_name is {name!r}, expected 'AutoencoderKLWan'")
    return folder


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"WanVAE dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


class WanVAE(nn.Module):
    """diffusers AutoencoderKLWan, frozen, with latents normalised per channel as Wan trains on them.

    Latents are (z - latents_mean) / latents_std from the VAE's config, so the diffusion model sees
    roughly unit-variance channels; decode undoes it and clamps pixels to [-1, 1]. Encode returns the
    posterior mean unless `sample` is set. Inputs may be any float dtype; the VAE runs in `dtype` and
    outputs come back in the input's dtype.

    Args:
        path: local folder with the VAE's config.json and weights, or a diffusers pipeline root with vae/.
        subfolder: subfolder of `path` holding the VAE (e.g. "vae"); found automatically when omitted.
        dtype: dtype the VAE runs in.
        sample: encode draws from the posterior instead of returning its mean.
    """

    def __init__(
        self, path: str, subfolder: str | None = None, dtype: DTypeName = "float32", sample: bool = False
    ) -> None:
        super().__init__()
        folder = _resolve_wan_dir(path, subfolder)
        torch_dtype = _dtype(dtype)
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch_dtype, local_files_only=True)
        self._attach(vae, sample)
        # kept so checkpoints can say how to rebuild the VAE
        self.path, self.subfolder, self.dtype_name = str(path), subfolder, dtype if isinstance(dtype, str) else None

    @classmethod
    def from_pretrained(
        cls, path: str, subfolder: str | None = None, dtype: DTypeName | torch.dtype = "float32", sample: bool = False
    ) -> WanVAE:
        """Load from a local folder (same as the constructor; the name diffusers users expect).

        Args:
            path: local VAE folder or pipeline root.
            subfolder: optional subfolder, e.g. "vae".
            dtype: dtype name or torch.dtype.
            sample: encode samples the posterior.
        """
        return cls(path, subfolder=subfolder, dtype=dtype, sample=sample)

    @classmethod
    def from_model(cls, vae: nn.Module, sample: bool = False) -> WanVAE:
        """Wrap an AutoencoderKLWan already in memory (tests, or weights converted elsewhere).

        Args:
            vae: diffusers AutoencoderKLWan.
            sample: encode samples the posterior.
        """
        wrapper = cls.__new__(cls)
        nn.Module.__init__(wrapper)
        wrapper._attach(vae, sample)
        return wrapper

    def _attach(self, vae: nn.Module, sample: bool) -> None:
        config = vae.config
        stages = len(config.dim_mult) - 1
        temporal = 2 ** sum(bool(flag) for flag in list(config.temperal_downsample)[:stages])
        if temporal != 4:
            raise UserError(
                f"AutoencoderKLWan config temperal_downsample={list(config.temperal_downsample)}: expected two "
                "True entries (4x in time, the chunking diffusers' Wan encoder assumes)"
            )
        self.vae = vae.eval().requires_grad_(False)
        self.sample = sample
        self.latent_channels = int(config.z_dim)
        self.temporal_factor = temporal
        self.spatial_factor = 2**stages * int(config.patch_size or 1)
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(list(config.latents_mean), dtype=torch.float32).reshape(shape)
        std = torch.tensor(list(config.latents_std), dtype=torch.float32).reshape(shape)
        # buffers follow .to(device) but are constants of the config, not weights
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", std, persistent=False)

    def train(self, mode: bool = True) -> WanVAE:
        """Stay in eval mode: the VAE is frozen."""
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """dtype the wrapped VAE runs in."""
        return next(self.vae.parameters()).dtype

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, z, t, H/sf, W/sf], T = 1 + 4*(t-1).

        Args:
            video: pixels.
            generator: random generator for posterior samples (only with sample=True).
        """
        _check_video(video, self.spatial_factor)
        latent_frames(video.shape[2], self.temporal_factor)
        posterior = self.vae.encode(video.to(self.dtype)).latent_dist
        z = posterior.sample(generator=generator) if self.sample else posterior.mode()
        return ((z.float() - self.latents_mean) / self.latents_std).to(video.dtype)

    def _denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, t, h, w], got shape {tuple(latents.shape)}")
        return (latents.float() * self.latents_std + self.latents_mean).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, t, h, w] -> video [B, 3, 1 + 4*(t-1), h*sf, w*sf] in [-1, 1].

        Args:
            latents: as produced by `encode`.
        """
        video = self.vae.decode(self._denormalize(latents)).sample
        return video.clamp(-1.0, 1.0).to(latents.dtype)

    def stream_decoder(self) -> WanStreamDecoder:
        """A decoder for consecutive latent chunks that keeps the causal convolution cache between them."""
        return WanStreamDecoder(self)


class WanStreamDecoder:
    """Decode a video chunk by chunk with the Wan decoder's causal cache carried across chunks.

    Decoding blocks independently would restart the causal convolutions at every block (and treat each
    block's first latent as a lone first frame), giving seams; carrying the cache makes the concatenated
    chunks equal the decode of the whole video. It relies on the decoder's
    `forward(x, feat_cache, feat_idx, first_chunk)` as diffusers' own decode uses it.

    Args:
        vae: the WanVAE.
    """

    def __init__(self, vae: WanVAE) -> None:
        self.vae = vae
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        decoder = self.vae.vae.decoder
        self._cache: list[torch.Tensor | None] = [
            None for module in decoder.modules() if type(module).__name__ == "WanCausalConv3d"
        ]
        self._started = False

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk [B, z, n, h, w]: 1 + 4*(n-1) frames for the first chunk, 4n after.

        Args:
            latents: normalised latents of the chunk.
        """
        inner = self.vae.vae
        x = inner.post_quant_conv(self.vae._denormalize(latents))
        frames = []
        for i in range(x.shape[2]):
            index = [0]
            first = not self._started
            frames.append(inner.decoder(x[:, :, i : i + 1], feat_cache=self._cache, feat_idx=index, first_chunk=first))
            self._started = True
        video = torch.cat(frames, dim=2)
        if inner.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=inner.config.patch_size)
        return video.clamp(-1.0, 1.0).to(latents.dtype)
