"""The generator every session shares: one copy of the weights, a fresh AvatarStreamer per session."""
from __future__ import annotations

import numpy as np
import torch

from lit_avatar.inference.audio_stream import SAMPLES_PER_FRAME
from lit_avatar.inference.options import RolloutOptions
from lit_avatar.inference.streamer import AvatarStreamer

__all__ = ["AvatarEngine"]


class AvatarEngine:
    """Builds per-session streamers over shared networks (the model is only read during inference).

    Args:
        model: causal AvatarDiT in eval mode.
        vae: VideoVAE.
        audio_encoder: AudioEncoder or None.
        options: rollout options (PSB, MCI, URCR) of every session.
        ref_image: uint8 [H, W, 3] reference; its size is the video's size.
        device: where the networks run.
        seed: noise seed of every stream (the same audio gives the same frames).
        text_encoder: the checkpoint's PromptEncoder (None: the model was trained without text; no prompts).
    """

    def __init__(self, model, vae, audio_encoder, options: RolloutOptions, ref_image: np.ndarray,
                 device: str | torch.device = "cpu", seed: int = 0, text_encoder=None) -> None:
        self.model, self.vae, self.audio_encoder = model, vae, audio_encoder
        self.options = options
        self.ref_image = ref_image
        self.device = torch.device(device)
        self.seed = seed
        self.text_encoder = text_encoder
        self.height, self.width = int(ref_image.shape[0]), int(ref_image.shape[1])
        # audio of one block after the first (the first is never longer): a session's turn in its worker
        self.block_samples = int(vae.temporal_factor) * options.frames_per_block * SAMPLES_PER_FRAME

    def embed(self, prompt: str | None) -> torch.Tensor | None:
        """A prompt's embeddings [1, L, text_dim] on the engine's device (each prompt encoded once: the
        encoder's memory and disk cache, shared by the workers); None stays None (the null text)."""
        if prompt is None:
            return None
        if self.text_encoder is None:
            raise ValueError("this model was trained without text: its checkpoint names no text encoder")
        return self.text_encoder([prompt], device=self.device)

    def new_streamer(self, prompt: str | None = None) -> AvatarStreamer:
        """A streamer with its own KV cache, history, audio buffer and decoder state, started on `prompt`."""
        return AvatarStreamer(self.model, self.vae, self.audio_encoder, self.options, self.ref_image,
                              text=self.embed(prompt), seed=self.seed, device=self.device, max_latency_records=64)
