"""Rebuild a generator (DiT + VAE + audio encoder + rollout options) from a checkpoint.

A checkpoint that can generate carries `checkpoint["lit_avatar"]` (docs/INTERFACES.md): plain specs
({"class_path", "init_args"}) of the networks, the rollout options and the prefix of the generator's
weights inside `state_dict`. Keeping the record plain (dicts, lists, str, numbers) is what lets
`torch.load(weights_only=True)` read it: loading never executes pickled code.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lit_avatar.errors import UserError
from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions

KINDS = ("teacher", "ode_init", "student")
RECORD_KEY = "lit_avatar"

__all__ = ["GeneratorBundle", "describe", "generator_record", "instantiate", "load_generator", "load_stage_weights",
           "rollout_options_from", "video_size_of"]


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so the record holds only JSON-like values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _class_path(obj: Any) -> str:
    cls = type(obj)
    while cls.__module__.startswith("torch.distributed."):
        cls = cls.__bases__[-1]  # fully_shard's generated FSDP<Name>(FSDPModule, Name): the network's own class
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_mel(encoder: nn.Module) -> dict:
    return {
        "n_mels": encoder.feature_dim,
        "columns_per_frame": encoder.columns_per_frame,
        "n_fft": encoder.n_fft,
        "win_length": encoder.win_length,
        "f_min": encoder.f_min,
        "f_max": encoder.f_max,
        "normalize": bool(encoder.normalize),
        "window": encoder.window,
    }


def _pretrained_path(obj: Any, label: str) -> str:
    """The local folder a from_pretrained model came from (transformers/diffusers record it)."""
    config = getattr(obj, "config", None)
    path = getattr(obj, "path", None) or getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if not path or not os.path.isdir(str(path)):
        raise UserError(f"{label}: cannot describe a model that was not loaded from a local folder")
    return str(path)


def describe(obj: Any) -> dict:
    """A plain {"class_path", "init_args"} spec from which `instantiate` rebuilds `obj` (without weights
    for the DiT; frozen parts reload their own local weights).

    Args:
        obj: an AvatarDiT, PatchVAE, WanVAE, MelAudioEncoder or Wav2Vec2AudioEncoder.
    """
    from lit_avatar.models.audio import MelAudioEncoder, Wav2Vec2AudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.vae import PatchVAE, WanVAE

    if isinstance(obj, AvatarDiT):
        args = {"config": dataclasses.asdict(obj.config)}
    elif isinstance(obj, PatchVAE):
        args = {"spatial_factor": obj.spatial_factor, "temporal_factor": obj.temporal_factor, "scale": float(obj.scale)}
    elif isinstance(obj, WanVAE):
        dtype = str(obj.dtype).removeprefix("torch.")
        args = {"path": _pretrained_path(obj.vae, "WanVAE"), "dtype": dtype, "sample": bool(obj.sample)}
    elif isinstance(obj, MelAudioEncoder):
        args = _describe_mel(obj)
    elif isinstance(obj, Wav2Vec2AudioEncoder):
        args = {"path": _pretrained_path(obj.model, "Wav2Vec2AudioEncoder"), "layers": obj.layers, "window": obj.window}
    else:
        raise TypeError(f"describe: no spec for {_class_path(obj)}")
    return {"class_path": _class_path(obj), "init_args": _plain(args)}


def _import(class_path: str, label: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{label}: class_path {class_path!r} cannot be imported (expected e.g. "
                        "'lit_avatar.models.dit.AvatarDiT')") from None


def instantiate(spec: dict, label: str = "spec") -> Any:
    """Build the object a `describe` spec names.

    Args:
        spec: {"class_path": "module.Class", "init_args": {...}}.
        label: what errors call the spec (e.g. "ckpt.pt: lit_avatar.model").
    """
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise UserError(f"{label}: expected a dict with 'class_path' and 'init_args'")
    cls = _import(spec["class_path"], label)
    args = dict(spec.get("init_args") or {})
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import DiTConfig

    if issubclass(cls, AvatarDiT) and isinstance(args.get("config"), dict):
        config = dict(args["config"])
        if "patch_size" in config:
            config["patch_size"] = tuple(config["patch_size"])
        names = {f.name for f in dataclasses.fields(DiTConfig)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise UserError(f"{label}: model config has unknown key {unknown[0]!r}")
        args["config"] = DiTConfig(**config)
    try:
        return cls(**args)
    except TypeError as err:
        raise UserError(f"{label}: cannot build {spec['class_path']} ({err})") from None


def generator_record(kind: str, model: nn.Module, vae: nn.Module, audio_encoder: nn.Module | None,
                     rollout_options: RolloutOptions | None, weights_prefix: str,
                     video_size: tuple[int, int] | None = None) -> dict:
    """The `checkpoint["lit_avatar"]` entry that lets `load_generator` rebuild the generator.

    Args:
        kind: "teacher" (bidirectional), "ode_init" or "student" (causal).
        model: the AvatarDiT whose weights are saved under `weights_prefix` (e.g. the EMA copy).
        vae: the frozen VideoVAE.
        audio_encoder: the frozen AudioEncoder, or None when training used precomputed features.
        rollout_options: the block-loop options the causal model was trained with (None for a teacher).
        weights_prefix: prefix of the generator's entries in `checkpoint["state_dict"]`, e.g. "ema_model.".
        video_size: training frame size [H, W], so inference crops references to the size the model knows.
    """
    if kind not in KINDS:
        raise ValueError(f"generator_record kind={kind!r}: expected one of {KINDS}")
    record = {
        "kind": kind,
        "model": describe(model),
        "vae": describe(vae),
        "audio_encoder": describe(audio_encoder) if audio_encoder is not None else None,
        "rollout": _plain(dataclasses.asdict(rollout_options)) if rollout_options is not None else None,
        "weights_prefix": weights_prefix,
    }
    if video_size is not None:
        record["video_size"] = [int(video_size[0]), int(video_size[1])]
    return record


def video_size_of(batch: dict) -> tuple[int, int] | None:
    """Training frame size [H, W] of a batch (what `generator_record` stores as `video_size`)."""
    if "video" in batch:
        return tuple(int(v) for v in batch["video"].shape[-2:])
    return None


def rollout_options_from(data: dict | None, label: str = "rollout") -> RolloutOptions:
    """RolloutOptions from their asdict() form (None -> defaults).

    Args:
        data: the record's "rollout" entry.
        label: what errors call it.
    """
    if data is None:
        return RolloutOptions()
    data = dict(data)
    try:
        for key, cls in (("psb", PSBOptions), ("mci", MCIOptions), ("urcr", URCROptions)):
            if key in data:
                data[key] = cls(**data[key])
        return RolloutOptions(**data)
    except TypeError as err:
        raise UserError(f"{label}: not valid rollout options ({err})") from None


@dataclass
class GeneratorBundle:
    """Everything streaming needs, rebuilt from a checkpoint."""

    kind: str
    model: nn.Module
    vae: nn.Module
    audio_encoder: nn.Module | None
    rollout_options: RolloutOptions
    video_size: tuple[int, int] | None = None


def _read_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found (expected a .ckpt/.pt file written by lit-avatar)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign files; all mean the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable torch checkpoint with plain contents ({reason[:160]})") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    return checkpoint


def _state_dict_of(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, generator record or {}) of a Lightning checkpoint, a plain state dict or safetensors."""
    if not os.path.isfile(path):
        raise UserError(f"weights {path!r}: file not found; expected a Lightning .ckpt or a .safetensors file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path), {}
    checkpoint = _read_checkpoint(path)
    if "state_dict" in checkpoint:
        return checkpoint["state_dict"], checkpoint.get(RECORD_KEY) or {}
    return checkpoint, {}


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
    state, record = _state_dict_of(path)
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


def load_generator(path: str, device: str | torch.device = "cpu") -> GeneratorBundle:
    """Rebuild the generator a checkpoint describes, weights loaded, in eval mode on `device`.

    Args:
        path: a checkpoint with `checkpoint["lit_avatar"]` and `checkpoint["state_dict"]`.
        device: where to put the networks.
    """
    checkpoint = _read_checkpoint(str(path))
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, dict) or "model" not in record:
        raise UserError(f"{path}: has no '{RECORD_KEY}' generator record (expected a checkpoint saved by a "
                        "lit-avatar teacher/ode_init/self-forcing module)")
    kind = record.get("kind")
    if kind not in KINDS:
        raise UserError(f"{path}: generator kind {kind!r} is not one of {', '.join(KINDS)}")
    model = instantiate(record["model"], f"{path}: {RECORD_KEY}.model")
    prefix = record.get("weights_prefix", "")
    state = checkpoint.get("state_dict", {})
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise UserError(f"{path}: state_dict has no weights under prefix {prefix!r}")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: weights under {prefix!r} do not fit the recorded model ({first[:200]})") from None
    vae = instantiate(record["vae"], f"{path}: {RECORD_KEY}.vae")
    encoder_spec = record.get("audio_encoder")
    encoder = instantiate(encoder_spec, f"{path}: {RECORD_KEY}.audio_encoder") if encoder_spec else None
    options = rollout_options_from(record.get("rollout"), f"{path}: {RECORD_KEY}.rollout")
    size = record.get("video_size")
    for net in (model, vae, encoder):
        if isinstance(net, nn.Module):
            net.to(device).eval().requires_grad_(False)
    return GeneratorBundle(kind, model, vae, encoder, options, tuple(size) if size else None)
