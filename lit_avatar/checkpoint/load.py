"""Building from a checkpoint: the whole generator for inference, or one network's weights for the next
training stage (teacher -> ODE init -> DMD)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_avatar.checkpoint.read import (
    FOLDER_WEIGHTS,
    GeneratorSource,
    is_exported,
    read_generator,
    read_safetensors,
    read_torch_checkpoint,
)
from lit_avatar.checkpoint.record import CAUSAL_KINDS, RECORD_KEY, instantiate, rollout_options_from
from lit_avatar.errors import UserError
from lit_avatar.inference.options import RolloutOptions


@dataclass
class GeneratorBundle:
    """Everything streaming needs, rebuilt from a checkpoint."""

    kind: str
    model: nn.Module
    vae: nn.Module
    audio_encoder: nn.Module | None
    rollout_options: RolloutOptions
    video_size: tuple[int, int] | None = None
    text_encoder: Any = None  # a PromptEncoder when the generator was trained with prompts


def require_causal(source: GeneratorSource, command: str) -> None:
    """Refuse a bidirectional teacher where `command` streams (before anything is built)."""
    if source.kind not in CAUSAL_KINDS:
        raise UserError(f"{source.path}: is a bidirectional teacher checkpoint; {command} streams with a causal "
                        "model: expected an ode_init or student checkpoint")


def build_generator(source: GeneratorSource, device: str | torch.device = "cpu") -> GeneratorBundle:
    """The networks a read checkpoint describes, weights loaded, in eval mode on `device`.

    Args:
        source: what `read_generator` returned (its record already checked against the allow-list).
        device: where to put the networks.
    """
    record, path = source.record, source.path
    model = instantiate(record["model"], source.name("model"))
    try:
        model.load_state_dict(source.weights(), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        prefix = record.get("weights_prefix", "")
        raise UserError(f"{path}: weights under {prefix!r} do not fit the recorded model ({first[:200]})") from None
    vae = instantiate(record["vae"], source.name("vae"))
    encoder_spec = record.get("audio_encoder")
    encoder = instantiate(encoder_spec, source.name("audio_encoder")) if encoder_spec else None
    text_spec = record.get("text_encoder")
    text_encoder = instantiate(text_spec, source.name("text_encoder")) if text_spec else None
    options = rollout_options_from(record.get("rollout"), source.name("rollout"))
    size = record.get("video_size")
    for net in (model, vae, encoder):
        if isinstance(net, nn.Module):
            net.to(device).eval().requires_grad_(False)
    return GeneratorBundle(source.kind, model, vae, encoder, options, tuple(size) if size else None, text_encoder)


def load_generator(path: str, device: str | torch.device = "cpu") -> GeneratorBundle:
    """Rebuild the generator a checkpoint file or exported folder describes, weights loaded, in eval mode.

    Args:
        path: a checkpoint with `checkpoint["lit_avatar"]` and `checkpoint["state_dict"]`, or a folder
            written by `lit-avatar export`.
        device: where to put the networks.
    """
    return build_generator(read_generator(path), device)


def _state_dict_of(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, generator record or {}) of a Lightning checkpoint, an exported folder, a plain state dict
    or a safetensors file."""
    if is_exported(path):
        source = read_generator(path)
        return read_safetensors(os.path.join(path, FOLDER_WEIGHTS)), source.record
    if not os.path.isfile(path):
        raise UserError(f"weights {path!r}: file not found; expected a Lightning .ckpt, a .safetensors file or a "
                        "folder written by lit-avatar export")
    if path.endswith(".safetensors"):
        return read_safetensors(path), {}
    checkpoint = read_torch_checkpoint(path)
    if "state_dict" in checkpoint:
        return checkpoint["state_dict"], checkpoint.get(RECORD_KEY) or {}
    return checkpoint, {}


def load_stage_weights(module: nn.Module, path: str, prefix: str | None = None) -> str:
    """Load a network's weights from an earlier stage's checkpoint (teacher -> ODE init -> DMD).

    Args:
        module: the network to fill (an AvatarDiT).
        path: a Lightning checkpoint of an earlier stage, an exported folder, or a plain/safetensors state dict.
        prefix: state-dict prefix to take, e.g. "ema_model." or "model."; default: the checkpoint's
            generator record `weights_prefix`, else "ema_model." when present, else "model.", else none.

    Returns:
        the prefix used.
    """
    if any(p.is_meta for p in module.parameters()):
        return prefix or ""  # meta-device instantiation (config tests): nothing to fill
    state, record = _state_dict_of(str(path))
    if prefix is None and isinstance(record, dict):
        prefix = record.get("weights_prefix")
    if not isinstance(prefix, str):
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
