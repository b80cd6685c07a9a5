"""Pieces shared by the distillation stages (ODE init, Self-Forcing DMD): conditions of a clip, seeded
randomness tied to the optimisation step, exit-step draws and weight loading between stages.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_avatar.errors import UserError
from lit_avatar.modules.conditions import audio_feats_of, latents_of, ref_latent_of


@dataclass
class ClipConditions:
    """What a network needs to score a clip: windowed audio features, reference latent, text.

    Null values (for CFG) follow INTERFACES.md: zeros for audio and reference, None for text.
    """

    audio: torch.Tensor | None
    ref: torch.Tensor | None
    text: torch.Tensor | None

    def as_kwargs(self) -> dict[str, Any]:
        return {"audio": self.audio, "ref": self.ref, "text": self.text}

    def without_audio(self, drop_ref: bool = False, drop_text: bool = False) -> "ClipConditions":
        """The 'unconditional' side of audio guidance (optionally dropping reference and text as well)."""
        audio = None if self.audio is None else torch.zeros_like(self.audio)
        ref = self.ref if not drop_ref or self.ref is None else torch.zeros_like(self.ref)
        return ClipConditions(audio, ref, None if drop_text else self.text)


def clip_inputs(batch: dict, vae: nn.Module, audio_encoder: nn.Module | None) -> tuple[torch.Tensor, ClipConditions]:
    """Clean latents [B,C,t,h,w] and their conditions, through the frozen VAE and audio encoder."""
    x0 = latents_of(batch, vae)
    tf = int(getattr(vae, "temporal_factor", 1))
    num_frames = batch["video"].shape[2] if "video" in batch else 1 + tf * (x0.shape[2] - 1)
    conds = ClipConditions(audio_feats_of(batch, audio_encoder, num_frames), ref_latent_of(batch, vae), batch.get("text"))
    return x0, conds


def step_generator(seed: int, step: int, stream: int = 0, rank: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, optimisation step, stream, rank), hashed so no two differ.

    Deriving every random draw of a step from its index makes a resumed run continue exactly like an
    uninterrupted one; `rank` gives each process its own draws (noise), while rank 0 for all gives a draw
    that is the same on every rank (the exit step must be: ranks that exit at different steps would do
    different amounts of work).
    """
    key = hashlib.blake2b(f"{int(seed)}/{int(step)}/{int(stream)}/{int(rank)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)


def generator_on(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """`generator` itself when it lives on `device`'s type, else a generator on `device` seeded by one draw
    of it: draws on an accelerator then still derive from (seed, step, stream), never the global RNG."""
    if generator is None or generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(2**62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def draw_exit_steps(step_counts: list[int], same_for_all_blocks: bool, generator: torch.Generator) -> list[int]:
    """One exit step per block, uniform over that block's steps.

    With `same_for_all_blocks` one uniform u in [0, 1) is shared and block i exits at floor(u * n_i), so
    blocks with equal step counts exit at the same index (Self-Forcing's option) and PSB blocks with more
    steps still exit uniformly over their own list.
    """
    if same_for_all_blocks:
        u = torch.rand((), generator=generator).item()
        return [min(int(u * n), n - 1) for n in step_counts]
    return [int(torch.randint(n, (), generator=generator)) for n in step_counts]


def _state_dict_of_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    if not os.path.isfile(path):
        raise UserError(f"weights {path!r}: file not found; expected a Lightning .ckpt or a .safetensors file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path), {}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt["state_dict"], ckpt.get("lit_avatar") or {}
    return ckpt, {}


def load_stage_weights(module: nn.Module, path: str, prefix: str | None = None) -> str:
    """Load a network's weights from an earlier stage's checkpoint (teacher -> ODE init -> DMD).

    Args:
        module: the network to fill (an AvatarDiT).
        path: a Lightning checkpoint of an earlier stage, or a plain/safetensors state dict.
        prefix: state-dict prefix to take, e.g. "ema_model." or "model."; default: the checkpoint's
            generator record `weights_prefix`, else "ema_model." when present, else "model.", else none.

    Returns:
        the prefix used.
    """
    if any(p.is_meta for p in module.parameters()):
        return prefix or ""  # meta-device instantiation (config tests): nothing to fill
    state, record = _state_dict_of_checkpoint(path)
    if prefix is None:
        prefix = record.get("weights_prefix")
    if prefix is None:
        for candidate in ("ema_model.", "model.", "generator_ema.", "generator."):
            if any(k.startswith(candidate) for k in state):
                prefix = candidate
                break
        else:
            prefix = ""
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise UserError(f"weights {path!r}: no entries under prefix {prefix!r}")
    missing, unexpected = module.load_state_dict(picked, strict=False)
    if missing or unexpected:
        raise UserError(f"weights {path!r} (prefix {prefix!r}): {len(missing)} missing keys (e.g. "
                        f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                        "expected a checkpoint of the same model preset")
    return prefix


def video_size_of(batch: dict) -> tuple[int, int] | None:
    """Training frame size [H, W] of a batch (stored in the generator record for inference crops)."""
    if "video" in batch:
        return tuple(int(v) for v in batch["video"].shape[-2:])
    return None


def tensorboard_of(module: Any):
    """The SummaryWriter of the module's TensorBoard logger, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in getattr(module, "loggers", []) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
