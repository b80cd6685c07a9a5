"""FSDP2 sharding of the stages' networks under Lightning's `ModelParallelStrategy` (DESIGN.md "Scale").

Each AvatarDiT is sharded per parameter (`fully_shard`) as units: every AvatarBlock, then the DiT itself
for the rest (embeddings, head, audio projector, null text). The LightningModule root is never a unit:
Lightning calls `training_step`, not `forward`, so a root unit would never gather its parameters. The DiT
is also driven through methods other than `forward` (the rollout calls `prefill`, `forward_cached` and
`audio_tokens`; a block's `text_kv`, `audio_kv`, `write_kv`), which are registered as FSDP forward methods
so that each call gathers the unit's parameters. Frozen networks (teacher, EMA copies) are sharded the same way;
the frozen VAE and audio encoder stay whole on every rank (small, and called outside any DiT).

Gradient norms of sharded parameters are DTensors: `global_grad_norm` and `torch.nn.utils.clip_grad_norm_`
reduce them over the mesh, so every rank sees, logs and clips by the norm of the full gradient.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

DIT_FORWARD_METHODS = ("prefill", "forward_cached", "audio_tokens")


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def fsdp_mesh(device_mesh):
    """The mesh to shard over: the strategy's mesh has dims (data_parallel, tensor_parallel); this project
    uses no tensor parallelism, so a dim of size 1 is dropped (plain FSDP over the other) and two real dims
    give HSDP: parameters sharded within `tensor_parallel` (by default the GPUs of a node) and replicated
    across `data_parallel` (by default the nodes)."""
    names = device_mesh.mesh_dim_names or ()
    if device_mesh.ndim == 1:
        return device_mesh
    if names == ("data_parallel", "tensor_parallel"):
        if device_mesh["tensor_parallel"].size() == 1:
            return device_mesh["data_parallel"]
        if device_mesh["data_parallel"].size() == 1:
            return device_mesh["tensor_parallel"]
    return device_mesh


def mixed_precision_policy(precision: str | None):
    """bf16 gathers and compute with fp32 gradient reduction for "bf16-mixed"; None (params' dtype) else."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision is not None and str(precision).startswith("bf16-mixed"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def shard_dit(model: nn.Module, mesh, mp_policy=None) -> None:
    """fully_shard every AvatarBlock, then the DiT (its remaining parameters), and register the methods the
    rollout calls instead of `forward`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for block in model.blocks:
        fully_shard(block, **kwargs)
        for method in ("text_kv", "audio_kv", "write_kv"):
            register_fsdp_forward_method(block, method)
    # explicitly resharded after every call (by default a root unit stays gathered after forward): one left
    # gathered after a no-grad call (the rollout's cached forwards, a frozen teacher, sampling with the EMA)
    # would show its unsharded, gradient-less tensors to parameters(), i.e. to the EMA update and the norms
    fully_shard(model, reshard_after_forward=True, **kwargs)
    for name in DIT_FORWARD_METHODS:
        register_fsdp_forward_method(model, name)


def shard_networks(module, names: Iterable[str]) -> bool:
    """Shard the named AvatarDiT attributes of a LightningModule when its strategy gave it a device mesh
    (ModelParallelStrategy); a no-op under other strategies and when already sharded. Returns whether the
    networks are sharded."""
    from lit_avatar.errors import UserError

    device_mesh = getattr(module, "_device_mesh", None)
    if device_mesh is None:
        return False
    trainer = getattr(module, "_trainer", None)
    policy = mixed_precision_policy(getattr(trainer, "precision", None) if trainer is not None else None)
    mesh = fsdp_mesh(device_mesh)
    for name in names:
        net = getattr(module, name, None)
        if net is None or is_sharded(net):
            continue
        if not hasattr(net, "blocks"):
            raise UserError(f"trainer.strategy: ModelParallelStrategy shards AvatarDiT networks per block; "
                            f"model.{name} is a {type(net).__name__}; use an AvatarDiT or a DDP strategy")
        shard_dit(net, mesh, policy)
    return True


def global_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """2-norm of the full gradient of `parameters` on every rank (DTensor shards are reduced over the mesh);
    None when no parameter has a gradient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    full_tensor = getattr(norm, "full_tensor", None)
    return full_tensor() if full_tensor is not None else norm
