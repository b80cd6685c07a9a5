"""Turning a batch into the DiT's inputs, and dropping conditions for classifier-free guidance."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lit_avatar.data.schema import CAPTION_EXT
from lit_avatar.models.dit import ClipConditions

if TYPE_CHECKING:
    from lit_avatar.prompts import PromptEncoder


def latents_of(batch: dict, vae: nn.Module) -> torch.Tensor:
    """Clean latents [B, C, t, h, w]: precomputed `latents`, else the frozen VAE's encoding of `video`."""
    if "latents" in batch:
        return batch["latents"].float()
    if "video" not in batch:
        raise KeyError("batch has neither 'video' nor 'latents'")
    with torch.no_grad():
        return vae.encode(batch["video"]).float()


def ref_latent_of(batch: dict, vae: nn.Module) -> torch.Tensor | None:
    """Reference latent [B, C, 1, h, w]: `ref_latent`, else the VAE encoding of the single frame `ref`."""
    if "ref_latent" in batch:
        return batch["ref_latent"].float()
    if "ref" not in batch:
        return None
    with torch.no_grad():
        return vae.encode(batch["ref"][:, :, None]).float()


def audio_feats_of(batch: dict, audio_encoder: nn.Module | None, num_frames: int) -> torch.Tensor | None:
    """Windowed audio features [B, T, W, D]: `audio_feats`, else the frozen encoder on `audio`."""
    if "audio_feats" in batch:
        return batch["audio_feats"].float()
    if audio_encoder is None or "audio" not in batch:
        return None
    with torch.no_grad():
        return audio_encoder(batch["audio"].float(), num_frames=num_frames).float()


def text_of(batch: dict, text_encoder: PromptEncoder | None, device: torch.device | str) -> torch.Tensor | None:
    """Text embeddings [B, L, text_dim]: precomputed `text`, else the captions `txt` through the PromptEncoder
    (each unique caption encoded once, then cached), else None (the model's learned null text)."""
    if "text" in batch:
        return batch["text"]
    if text_encoder is None or CAPTION_EXT not in batch:
        return None
    return text_encoder(list(batch[CAPTION_EXT]), device=device)


def _device_of(batch: dict) -> torch.device:
    return next((v.device for v in batch.values() if torch.is_tensor(v)), torch.device("cpu"))


def video_frames(num_latent_frames: int, vae: nn.Module) -> int:
    """Video frames of `num_latent_frames` latent frames on the VAE's causal grid: 1 + tf * (t - 1)."""
    return 1 + int(getattr(vae, "temporal_factor", 1)) * (num_latent_frames - 1)


def latent_frames(num_video_frames: int, vae: nn.Module) -> int:
    """Latent frames of `num_video_frames` video frames on the VAE's causal grid: 1 + (T - 1) // tf."""
    return 1 + (num_video_frames - 1) // int(getattr(vae, "temporal_factor", 1))


def clip_conditions(batch: dict, vae: nn.Module, audio_encoder: nn.Module | None,
                    num_latent_frames: int, text_encoder: PromptEncoder | None = None) -> ClipConditions:
    """The conditions of a clip of `num_latent_frames` latent frames, through the frozen VAE, audio encoder
    and text encoder (a PromptEncoder, for captions); the audio is windowed for the batch's `video` frames,
    or for those of the latents without video."""
    num_frames = batch["video"].shape[2] if "video" in batch else video_frames(num_latent_frames, vae)
    return ClipConditions(audio_feats_of(batch, audio_encoder, num_frames), ref_latent_of(batch, vae),
                          text_of(batch, text_encoder, _device_of(batch)))


def clip_inputs(batch: dict, vae: nn.Module, audio_encoder: nn.Module | None,
                text_encoder: PromptEncoder | None = None) -> tuple[torch.Tensor, ClipConditions]:
    """Clean latents [B,C,t,h,w] and their conditions, through the frozen VAE, audio and text encoders."""
    x0 = latents_of(batch, vae)
    return x0, clip_conditions(batch, vae, audio_encoder, x0.shape[2], text_encoder)


def drop_conditions(
    audio: torch.Tensor | None,
    ref: torch.Tensor | None,
    text: torch.Tensor | None,
    audio_p: float,
    ref_p: float,
    text_p: float,
    all_p: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Replace conditions by their null values so one network also learns the (partly) unconditional
    predictions that guidance subtracts.

    Audio and reference are dropped per sample, independently, with probabilities `audio_p` and `ref_p`,
    and together with probability `all_p` (the fully unconditional case guidance needs most). Their null
    is zeros (INTERFACES.md). Text's null is the model's learned embedding, selected by passing None, which
    applies to the whole batch, so text is dropped per batch with probability `text_p` (and with `all_p`).
    """
    ref_tensor = audio if audio is not None else ref
    if ref_tensor is None and text is None:
        return audio, ref, text
    device = (ref_tensor if ref_tensor is not None else text).device
    batch = (ref_tensor if ref_tensor is not None else text).shape[0]
    u = torch.rand(3, batch, generator=generator, device="cpu").to(device)
    drop_all = u[0] < all_p
    if audio is not None:
        keep = ~((u[1] < audio_p) | drop_all)
        audio = audio * keep.to(audio.dtype).reshape(-1, *([1] * (audio.ndim - 1)))
    if ref is not None:
        keep = ~((u[2] < ref_p) | drop_all)
        ref = ref * keep.to(ref.dtype).reshape(-1, *([1] * (ref.ndim - 1)))
    if text is not None:
        r = float(torch.rand((), generator=generator))
        if r < text_p + all_p:
            text = None
    return audio, ref, text
