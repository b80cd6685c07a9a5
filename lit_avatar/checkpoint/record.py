"""The generator record: what training writes beside the weights so inference can rebuild the generator.

`record = {"kind", "model", "vae", "audio_encoder", "text_encoder", "rollout", "weights_prefix", "video_size"}`
where each network is a plain spec {"class_path", "init_args"} (docs/INTERFACES.md). `describe` and `generator_record`
write it; `check_record` holds what is read against the allow-list before `instantiate` imports anything.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from lit_avatar.checkpoint.allow import OPTIONAL_SLOTS, SLOT_CLASSES, allowed_class, check_plain, check_spec
from lit_avatar.errors import UserError
from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions

KINDS = ("teacher", "ode_init", "student")
CAUSAL_KINDS = ("ode_init", "student")
RECORD_KEY = "lit_avatar"
RECORD_KEYS = ("kind", "model", "vae", "audio_encoder", "text_encoder", "rollout", "weights_prefix", "video_size")


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
        obj: an AvatarDiT, PatchVAE, WanVAE, MelAudioEncoder, Wav2Vec2AudioEncoder or PromptEncoder.
    """
    from lit_avatar.models.audio import MelAudioEncoder, Wav2Vec2AudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.vae import PatchVAE, WanVAE
    from lit_avatar.prompts.encoder import PromptEncoder

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
    elif isinstance(obj, PromptEncoder):
        args = {"path": obj.path, "max_length": obj.max_length, "dtype": obj.dtype}
    else:
        raise TypeError(f"describe: no spec for {_class_path(obj)}")
    return {"class_path": _class_path(obj), "init_args": _plain(args)}


def _dit_config(config: dict, label: str):
    from lit_avatar.models.presets import DiTConfig

    config = dict(config)
    if "patch_size" in config:
        config["patch_size"] = tuple(config["patch_size"])
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(DiTConfig)})
    if unknown:
        raise UserError(f"{label}.init_args.config.{unknown[0]}: not a DiTConfig field")
    return DiTConfig(**config)


def instantiate(spec: dict, label: str = "spec") -> Any:
    """Build the object a `describe` spec names, after checking it against the allow-list.

    Args:
        spec: {"class_path": "module.Class", "init_args": {...}}.
        label: the spec's name in errors (e.g. "ckpt.pt: lit_avatar.model").
    """
    check_spec(spec, label)
    from lit_avatar.models.dit import AvatarDiT

    cls = allowed_class(spec["class_path"])
    args = dict(spec.get("init_args") or {})
    try:
        if cls is AvatarDiT and isinstance(args.get("config"), dict):
            args["config"] = _dit_config(args["config"], label)
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise UserError(f"{label}: cannot build {spec['class_path']} ({err})") from None


def check_record(record: Any, where: str, key: str = "") -> dict:
    """The record, if every part of it is allowed data; else a one-line UserError naming the key.

    Args:
        record: `checkpoint["lit_avatar"]` or an exported folder's generator.json.
        where: the file in errors, e.g. "student.ckpt".
        key: the record's own key in that file ("lit_avatar" in a .ckpt, "" for generator.json).
    """
    def name(part: str) -> str:
        return f"{where}: {key}.{part}" if key else f"{where}: {part}"

    if not isinstance(record, dict) or "model" not in record:
        raise UserError(f"{where}: {key or 'record'}: expected a generator record (a dict with kind, model, vae, "
                        "...) as written by a lit-avatar teacher/ode_init/self-forcing module")
    unknown = sorted(set(record) - set(RECORD_KEYS), key=str)
    if unknown:
        raise UserError(f"{name(str(unknown[0]))}: unknown key; expected only {', '.join(RECORD_KEYS)}")
    if record.get("kind") not in KINDS:
        raise UserError(f"{name('kind')} {record.get('kind')!r}: expected one of {', '.join(KINDS)}")
    for slot, allowed in SLOT_CLASSES.items():
        if slot not in OPTIONAL_SLOTS or record.get(slot) is not None:
            check_spec(record.get(slot), name(slot), allowed)
    if record.get("rollout") is not None and not isinstance(record["rollout"], dict):
        raise UserError(f"{name('rollout')}: expected a dict of rollout options or null")
    check_plain(record.get("rollout"), name("rollout"))
    if not isinstance(record.get("weights_prefix", ""), str):
        raise UserError(f"{name('weights_prefix')}: expected a string such as 'ema_model.'")
    size = record.get("video_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                                 and all(type(v) is int and v > 0 for v in size)):
        raise UserError(f"{name('video_size')} {size!r}: expected [height, width], positive integers")
    return record


def generator_record(kind: str, model: nn.Module, vae: nn.Module, audio_encoder: nn.Module | None,
                     rollout_options: RolloutOptions | None, weights_prefix: str,
                     video_size: tuple[int, int] | None = None, text_encoder: Any = None) -> dict:
    """The `checkpoint["lit_avatar"]` entry that lets `load_generator` rebuild the generator.

    Args:
        kind: "teacher" (bidirectional), "ode_init" or "student" (causal).
        model: the AvatarDiT whose weights are saved under `weights_prefix` (e.g. the EMA copy).
        vae: the frozen VideoVAE.
        audio_encoder: the frozen AudioEncoder, or None when training used precomputed features.
        rollout_options: the block-loop options the causal model was trained with (None for a teacher).
        weights_prefix: prefix of the generator's entries in `checkpoint["state_dict"]`, e.g. "ema_model.".
        video_size: training frame size [H, W], so inference crops references to the size the model knows.
        text_encoder: the PromptEncoder that embedded the training captions (None: trained without text).
    """
    if kind not in KINDS:
        raise ValueError(f"generator_record kind={kind!r}: expected one of {KINDS}")
    record = {
        "kind": kind,
        "model": describe(model),
        "vae": describe(vae),
        "audio_encoder": describe(audio_encoder) if audio_encoder is not None else None,
        "text_encoder": describe(text_encoder) if text_encoder is not None else None,
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
    except (TypeError, ValueError) as err:
        raise UserError(f"{label}: not valid rollout options ({err})") from None
