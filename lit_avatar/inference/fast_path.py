"""Inference settings a GPU user gets by default: bf16 weights, TF32 where fp32 remains, compiled blocks.

`lit-avatar generate` and `lit-avatar bench stream` share these, so the benchmark measures what a user runs.
Everything CUDA-specific is guarded by the device type: on a CPU the same calls are no-ops or plain casts.
"""
from __future__ import annotations

import torch
from torch import nn

from lit_avatar.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ["auto", *DTYPES]

__all__ = ["DTYPE_CHOICES", "cast_for_inference", "compile_blocks", "configure_device", "resolve_dtype"]


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The weights' dtype: `auto` is bfloat16 on CUDA (tensor cores, flash attention) and float32 on CPU.

    Args:
        name: auto, float32, bfloat16 or float16.
        device: where the networks run.
    """
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"--dtype {name!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


def configure_device(device: torch.device | str) -> dict:
    """TF32 for the matmuls and convolutions left in float32 (norms, RoPE, the VAE if run in fp32) on CUDA.

    Returns what was set, for the run's sidecar/JSON.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return {"tf32": False}
    # the one API every torch version keeps (newer ones refuse a mix of the legacy allow_tf32 flags and the
    # fp32_precision settings); cuDNN convolutions already default to TF32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True  # fixed block shapes: pick the fastest conv algorithm once
    return {"tf32": True, "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32), "cudnn_benchmark": True}


def _has_parameters(module: object) -> bool:
    return isinstance(module, nn.Module) and any(True for _ in module.parameters())


def cast_for_inference(dtype: torch.dtype, *modules: object) -> None:
    """Cast networks with weights to `dtype` in place; weightless ones (log-mel, PatchVAE) keep float32
    buffers (torch.stft has no bf16 kernel on CPU)."""
    for module in modules:
        if _has_parameters(module):
            module.to(dtype=dtype)


def compile_blocks(model: nn.Module, mode: str | None = None) -> None:
    """torch.compile every DiT block (the cached forward is captured whole: see tests).

    Blocks share one code object, so a handful of graphs (block, reset write, reference prefill, each
    context length until the ring is full) serve all layers; the recompile limit is raised so that those
    few shapes never fall back to eager.

    Args:
        model: an AvatarDiT.
        mode: torch.compile mode (None: inductor's default; "max-autotune-no-cudagraphs" tunes matmuls).
    """
    import torch._dynamo.config as dynamo_config

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
    for block in model.blocks:
        block.compile(mode=mode, dynamic=False)
