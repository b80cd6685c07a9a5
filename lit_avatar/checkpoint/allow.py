"""The allow-list: what a generator record may name, checked before anything is imported or called.

A checkpoint is data from whoever shared it. Its record says which classes rebuild the generator, so
without a check it could name `subprocess.Popen` and run a program. Here a record may name, per slot,
only this project's networks, each with the argument names `describe` writes and plain JSON values
(numbers, strings, booleans, null, lists, dicts with string keys): no nested `class_path`, no callables,
no tensors. The wrappers load the third-party networks they wrap themselves, from local folders only:
WanVAE -> diffusers `AutoencoderKLWan.from_pretrained(..., local_files_only=True)`, Wav2Vec2AudioEncoder
-> transformers `Wav2Vec2Model.from_pretrained(..., local_files_only=True)`, PromptEncoder -> transformers
`UMT5EncoderModel` + `AutoTokenizer` (`local_files_only`, no remote code), only on a prompt cache miss; a
record cannot name those (or any other) third-party classes itself.
"""
from __future__ import annotations

import importlib
import math
from typing import Any

from lit_avatar.errors import UserError

# class_path -> the init_args names a record may give it (exactly what `describe` writes, nothing that loads
# files beyond the frozen parts' own local folders)
ALLOWED_CLASSES: dict[str, frozenset[str]] = {
    "lit_avatar.models.dit.AvatarDiT": frozenset({"config"}),
    "lit_avatar.models.vae.PatchVAE": frozenset({"spatial_factor", "temporal_factor", "scale"}),
    "lit_avatar.models.vae.WanVAE": frozenset({"path", "subfolder", "dtype", "sample"}),
    "lit_avatar.models.audio.MelAudioEncoder": frozenset({"n_mels", "columns_per_frame", "n_fft", "win_length",
                                                          "f_min", "f_max", "normalize", "window"}),
    "lit_avatar.models.audio.Wav2Vec2AudioEncoder": frozenset({"path", "layers", "window"}),
    "lit_avatar.prompts.encoder.PromptEncoder": frozenset({"path", "max_length", "dtype"}),
}

# record slot -> the classes it may name
SLOT_CLASSES: dict[str, tuple[str, ...]] = {
    "model": ("lit_avatar.models.dit.AvatarDiT",),
    "vae": ("lit_avatar.models.vae.PatchVAE", "lit_avatar.models.vae.WanVAE"),
    "audio_encoder": ("lit_avatar.models.audio.MelAudioEncoder", "lit_avatar.models.audio.Wav2Vec2AudioEncoder"),
    "text_encoder": ("lit_avatar.prompts.encoder.PromptEncoder",),
}
OPTIONAL_SLOTS = ("audio_encoder", "text_encoder")  # null when training used precomputed features / no text

PLAIN = "plain JSON values: numbers, strings, booleans, null, lists and dicts with string keys"


def check_plain(value: Any, key: str) -> None:
    """Refuse anything but JSON-like values, and any nested `class_path`, naming the key at fault.

    Args:
        value: the value to check (recursively).
        key: its dotted name in errors, e.g. "lit_avatar.model.init_args".
    """
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{key}: {value!r} is not a finite number; expected {PLAIN}")
        return
    if isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            check_plain(item, f"{key}[{n}]")
        return
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise UserError(f"{key}: key {name!r} is not a string; expected {PLAIN}")
            if name == "class_path":
                raise UserError(f"{key}.class_path: a nested class_path is not allowed; expected {PLAIN}")
            check_plain(item, f"{key}.{name}")
        return
    raise UserError(f"{key}: a {type(value).__module__}.{type(value).__qualname__} is not allowed; expected {PLAIN}")


def check_spec(spec: Any, key: str, allowed: tuple[str, ...] = tuple(ALLOWED_CLASSES)) -> None:
    """Check a {"class_path", "init_args"} spec against the allow-list, before anything is imported.

    Args:
        spec: the spec as read from the checkpoint.
        key: its dotted name in errors, e.g. "lit_avatar.vae".
        allowed: the class paths this slot may name.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise UserError(f"{key}: expected a dict with a 'class_path' string and 'init_args'")
    extra = sorted(set(spec) - {"class_path", "init_args"})
    if extra:
        raise UserError(f"{key}.{extra[0]}: unknown key; a spec has only class_path and init_args")
    class_path = spec["class_path"]
    if class_path not in allowed:
        raise UserError(f"{key}.class_path {class_path!r}: not an allowed class; expected {' or '.join(allowed)}")
    args = spec.get("init_args") or {}
    if not isinstance(args, dict):
        raise UserError(f"{key}.init_args: expected a dict of {PLAIN}")
    for name in args:
        if name not in ALLOWED_CLASSES[class_path]:
            names = ", ".join(sorted(ALLOWED_CLASSES[class_path]))
            raise UserError(f"{key}.init_args.{name}: not an argument a record may give {class_path} "
                            f"(expected {names})")
    check_plain(args, f"{key}.init_args")


def allowed_class(class_path: str) -> type:
    """The class of an allow-listed class path (import by our own table, never by a record's string alone)."""
    if class_path not in ALLOWED_CLASSES:
        raise UserError(f"class_path {class_path!r}: not an allowed class; expected one of "
                        f"{', '.join(ALLOWED_CLASSES)}")
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)
