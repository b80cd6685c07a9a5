"""Load Wan2.1 DiT checkpoints into AvatarDiT.

AvatarDiT uses the parameter names of the original Wan release (`blocks.0.self_attn.q.weight`,
`head.modulation`, ...), so original-layout files load as they are; diffusers-layout folders
(`WanTransformer3DModel`, possibly sharded) are renamed. The layout is detected from the keys,
because the original release also ships a `diffusion_pytorch_model.safetensors` with a config.json.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from lit_avatar.errors import UserError

# (diffusers pattern, avatar/original replacement), applied in order to each key.
_DIFFUSERS_TO_ORIGINAL = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' cross-attention norm is Wan's norm3
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
]

# Parameters AvatarDiT adds to Wan: they keep their initialisation when a Wan checkpoint is loaded.
AVATAR_ONLY = re.compile(r"^(null_text|audio_projector\.|blocks\.\d+\.(audio_attn|norm_audio)\.)")


def diffusers_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers WanTransformer3DModel state dict to the original Wan names."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _DIFFUSERS_TO_ORIGINAL:
            new, hits = re.subn(pattern, repl, new)
            if hits:
                break
        out[new] = value
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    raise UserError(f"{path}: unsupported checkpoint file; expected .safetensors, .pt, .pth or .bin")


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint not found; expected a diffusers folder or a .safetensors file")
    if (path / "transformer").is_dir() and not list(path.glob("*.safetensors")):
        path = path / "transformer"
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth")) or sorted(path.glob("*.bin"))
    if not files:
        raise UserError(f"{path}: no .safetensors/.pth/.bin weight files in the folder")
    return files


def read_wan_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Wan checkpoint (file or possibly sharded folder), in original/AvatarDiT names."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(path)):
        state.update(_read_tensors(file))
    state = {re.sub(r"^(model\.diffusion_model|model|module|_orig_mod)\.", "", k): v for k, v in state.items()}
    if any(k.startswith("condition_embedder.") for k in state):
        state = diffusers_to_original(state)
    return state


def load_wan_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a Wan checkpoint into `model`; returns the avatar-only keys left at their initialisation.

    Raises UserError naming the first key that does not fit (unexpected, missing or wrong shape).
    """
    state = read_wan_state_dict(path)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise UserError(
            f"{path}: checkpoint key {unexpected[0]!r} does not fit the model "
            f"({len(unexpected)} unexpected keys; is this a Wan2.1 T2V DiT checkpoint?)"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(
                f"{path}: checkpoint key {key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)} (wrong preset or overrides?)"
            )
    missing = sorted(k for k in own if k not in state)
    not_avatar = [k for k in missing if not AVATAR_ONLY.match(k)]
    if not_avatar:
        raise UserError(f"{path}: checkpoint lacks key {not_avatar[0]!r} ({len(not_avatar)} backbone keys missing)")
    model.load_state_dict(state, strict=False)
    return missing
