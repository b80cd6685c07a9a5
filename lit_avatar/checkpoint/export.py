"""The shareable form of a generator: a folder with generator.json (the record) and model.safetensors
(the DiT's weights, no prefix). Neither file can hold code: JSON is data, safetensors is raw tensors."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lit_avatar.checkpoint.read import FOLDER_RECORD, FOLDER_WEIGHTS, GeneratorSource, read_generator
from lit_avatar.checkpoint.record import instantiate
from lit_avatar.errors import UserError


def _check_fit(source: GeneratorSource, weights: dict[str, torch.Tensor]) -> None:
    """The weights fit the recorded DiT (names and shapes, on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model = instantiate(source.record["model"], source.name("model"))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise UserError(f"{source.path}: weights do not fit the recorded model ({len(missing)} missing, e.g. "
                        f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}; {len(shapes)} of "
                        f"another shape, e.g. {shapes[:2]})")


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that own their memory (safetensors refuses views of one another)."""
    seen: set[int] = set()
    out = {}
    for key, value in weights.items():
        value = value.detach().contiguous()
        pointer = value.untyped_storage().data_ptr()
        out[key] = value.clone() if pointer in seen and value.numel() else value
        seen.add(pointer)
    return out


def export_generator(ckpt: str | Path, out: str | Path) -> Path:
    """Write the exported folder of a checkpoint: all of it or nothing (built beside `out`, then renamed).

    Args:
        ckpt: a checkpoint with a generator record (its record is checked against the allow-list first).
        out: a folder that does not exist yet, or an empty one.
    """
    from safetensors.torch import save_file

    out = Path(out).absolute()  # a name to stage beside, even for "."
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; expected a new folder")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    source = read_generator(ckpt)
    weights = _unshared(source.weights())
    _check_fit(source, weights)
    record = {**source.record, "weights_prefix": ""}
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_file(weights, str(staging / FOLDER_WEIGHTS), metadata={"format": "pt"})
        (staging / FOLDER_RECORD).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(staging, out)  # rename(2) replaces an empty folder in one step
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
