"""Reading checkpoints: a Lightning .ckpt (torch.load with weights_only=True) or an exported folder
(generator.json + model.safetensors, written by `lit-avatar export`; no pickle at all).

`read_generator` returns the checked record and a way to get the generator's weights; nothing is built
and nothing the record names is imported here, so callers can refuse (a teacher, say) before any cost.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lit_avatar.checkpoint.record import RECORD_KEY, check_record
from lit_avatar.errors import UserError

FOLDER_RECORD = "generator.json"
FOLDER_WEIGHTS = "model.safetensors"


def is_exported(path: str | Path) -> bool:
    """Whether `path` is a folder `lit-avatar export` wrote."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, FOLDER_RECORD))


def checkpoint_path(path: str | Path, what: str, option: str = "--ckpt") -> Path:
    """`path` if it is a checkpoint file or an exported folder; else a one-line UserError naming the option."""
    path = Path(path)
    if path.is_dir() and not is_exported(path):
        raise UserError(f"{option} {path}: is a folder without {FOLDER_RECORD}; expected {what} (a .ckpt file or "
                        "a folder written by lit-avatar export)")
    if not path.exists():
        raise UserError(f"{option} {path}: not found; expected {what}")
    return path


def read_torch_checkpoint(path: str) -> dict:
    """A torch-saved dict, read with weights_only=True (tensors and plain values only: no code runs)."""
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


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a one-line UserError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({str(err).strip()[:160]})") from None


@dataclass(frozen=True)
class GeneratorSource:
    """A checkpoint's checked generator record and its weights, read but not built.

    Args:
        path: the checkpoint file or exported folder.
        record: the record, checked against the allow-list.
        read_weights: returns the generator's state dict with the record's prefix removed.
        label: how errors name the record's keys: "student.ckpt: lit_avatar." or "DIR/generator.json: ".
    """

    path: str
    record: dict
    read_weights: Callable[[], dict[str, torch.Tensor]]
    label: str = ""

    def name(self, key: str) -> str:
        """A record key as errors name it, e.g. "student.ckpt: lit_avatar.vae"."""
        return f"{self.label}{key}"

    @property
    def kind(self) -> str:
        return self.record["kind"]

    def weights(self) -> dict[str, torch.Tensor]:
        """The generator's weights (names as in the DiT's own state_dict)."""
        weights = self.read_weights()
        if not weights:
            raise UserError(f"{self.path}: has no generator weights under prefix "
                            f"{self.record.get('weights_prefix', '')!r}")
        return weights


def _read_folder(path: str) -> GeneratorSource:
    record_file = os.path.join(path, FOLDER_RECORD)
    try:
        with open(record_file, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{record_file}: not a readable JSON generator record ({err})") from None
    check_record(record, record_file)
    if record.get("weights_prefix", "") != "":
        raise UserError(f"{record_file}: weights_prefix {record['weights_prefix']!r}: expected '' in an exported "
                        "folder (its weights are stored without a prefix)")
    weights_file = os.path.join(path, FOLDER_WEIGHTS)
    return GeneratorSource(path, record, lambda: read_safetensors(weights_file), f"{record_file}: ")


def _read_file(path: str) -> GeneratorSource:
    checkpoint = read_torch_checkpoint(path)
    if RECORD_KEY not in checkpoint:
        raise UserError(f"{path}: has no '{RECORD_KEY}' generator record (expected a checkpoint saved by a "
                        "lit-avatar teacher/ode_init/self-forcing module)")
    record = check_record(checkpoint[RECORD_KEY], path, RECORD_KEY)
    prefix = record.get("weights_prefix", "")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise UserError(f"{path}: state_dict: expected a dict of tensors")

    def weights() -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}

    return GeneratorSource(path, record, weights, f"{path}: {RECORD_KEY}.")


def read_generator(path: str | Path) -> GeneratorSource:
    """The checked record and weights of a checkpoint file or exported folder (nothing built or imported).

    Args:
        path: a checkpoint with `checkpoint["lit_avatar"]` and `checkpoint["state_dict"]`, or a folder
            written by `lit-avatar export`.
    """
    path = str(path)
    return _read_folder(path) if is_exported(path) else _read_file(path)
