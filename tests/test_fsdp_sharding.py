"""FSDP2 sharding of the DiT (lit_avatar.modules.sharding) on 2 CPU processes with gloo, against one unsharded
process: forwards (full-sequence with the reference sink and text, block-causal, and the cached rollout path
with its prefill) match; the gradient equals the unsharded one of the mean loss; the gradient norm is the
norm of the gathered full gradient on every rank and clipping scales every rank's shard by the same factor;
the EMA of sharded weights equals the EMA computed from gathered weights; under bf16-mixed the weights and
gradients stay fp32 and the output is the fp32 one within bf16 error."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return {"x": torch.randn(1, 12, 4, 4, 4, generator=g), "audio": torch.randn(1, 4, 5, 16, generator=g),
            "ref": torch.randn(1, 12, 1, 4, 4, generator=g), "text": torch.randn(1, 3, 16, generator=g),
            "t": torch.rand(1, 4, generator=g) * 1000}


def _loss(model, inp):
    out = model(inp["x"], inp["t"], audio=inp["audio"], ref=inp["ref"], text=inp["text"], frames_per_block=2)
    return out.square().mean(), out


def _cached(model, inp):
    cache = model.new_cache(capacity=4, latent_height=4, latent_width=4)
    with torch.no_grad():
        model.prefill(cache, inp["ref"], inp["text"], 1, 2, 2)
        tokens = model.audio_tokens(inp["audio"])
        first = model.forward_cached(inp["x"][:, :, :2], inp["t"][:, :2], torch.arange(2), cache, tokens[:, :2],
                                     write_frames=[0, 1])
        second = model.forward_cached(inp["x"][:, :, 2:], inp["t"][:, 2:], torch.arange(2, 4), cache, tokens[:, 2:])
    return torch.cat([first, second], dim=2)


def _worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.modules.ema import ema_update, make_ema_copy
    from lit_avatar.modules.sharding import global_grad_norm, mixed_precision_policy, shard_dit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reference = AvatarDiT(preset="micro", overrides={"gradient_checkpointing": True})
    with torch.no_grad():  # the zero-initialised audio output would hide the audio path
        for block in reference.blocks:
            block.audio_attn.o.weight.normal_(0, 0.1)
    model = AvatarDiT(preset="micro", overrides={"gradient_checkpointing": True})
    model.load_state_dict(reference.state_dict())
    ema = make_ema_copy(model)
    shard_dit(model, init_device_mesh("cpu", (2,)))
    shard_dit(ema, init_device_mesh("cpu", (2,)))
    result = {}

    # forward and gradient: rank r's loss on its own inputs; FSDP averages the gradients over ranks
    inp = _inputs(rank)
    loss, out = _loss(model, inp)
    loss.backward()
    ref_out = _loss(reference, inp)[1]
    result["forward_diff"] = float((out - ref_out).detach().abs().max())
    result["cached_diff"] = float((_cached(model, inp) - _cached(reference, inp)).abs().max())
    mean_loss = sum(_loss(reference, _inputs(r))[0] for r in range(2)) / 2
    mean_loss.backward()
    params = dict(model.named_parameters())
    grad_diff = 0.0
    full = []
    for name, p in reference.named_parameters():
        if p.grad is None:  # the null text embedding: text is given
            assert params[name].grad is None, name
            continue
        assert params[name].grad is not None, f"no sharded gradient for {name}"
        g = params[name].grad.full_tensor()
        full.append(g)
        grad_diff = max(grad_diff, float((g - p.grad).abs().max()))
    result["grad_diff"] = grad_diff
    gathered_norm = float(torch.sqrt(sum(g.double().square().sum() for g in full)))
    result["gathered_norm"] = gathered_norm
    result["global_norm"] = float(global_grad_norm(model.parameters()))
    local_pre = float(torch.sqrt(sum(p.grad.to_local().double().square().sum() for p in model.parameters()
                                     if p.grad is not None)))
    clip_total = torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_norm=gathered_norm / 4)
    result["clip_total"] = float(clip_total.full_tensor() if hasattr(clip_total, "full_tensor") else clip_total)
    local_post = float(torch.sqrt(sum(p.grad.to_local().double().square().sum() for p in model.parameters()
                                      if p.grad is not None)))
    result["clip_scale"] = local_post / local_pre
    result["norm_after_clip"] = float(global_grad_norm(model.parameters()))

    # EMA on matching local shards == EMA of the gathered weights
    ref_ema = {n: p.full_tensor().clone() for n, p in ema.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.step()
        ema_update(ema, model, 0.5)
        for n, p in model.named_parameters():
            ref_ema[n] = 0.5 * ref_ema[n] + 0.5 * p.detach().full_tensor()
    result["ema_diff"] = max(float((p.full_tensor() - ref_ema[n]).abs().max()) for n, p in ema.named_parameters())
    result["ema_moved"] = max(float((p.full_tensor() - reference.state_dict()[n]).abs().max())
                              for n, p in ema.named_parameters())

    # bf16-mixed (the recipes' precision): bf16 gathers and compute, fp32 sharded weights and gradients
    mixed = AvatarDiT(preset="micro")
    mixed.load_state_dict(reference.state_dict())
    shard_dit(mixed, init_device_mesh("cpu", (2,)), mixed_precision_policy("bf16-mixed"))
    loss, out = _loss(mixed, inp)
    loss.backward()
    result["bf16_rel_error"] = float((out - ref_out).detach().abs().max() / ref_out.detach().abs().max())
    result["bf16_dtypes"] = sorted({str(p.dtype) for p in mixed.parameters()} | {str(p.grad.dtype) for p in
                                    mixed.parameters() if p.grad is not None})
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def test_sharded_dit_matches_unsharded_and_norms_are_global(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["forward_diff"] < 1e-5 and r["cached_diff"] < 1e-5
        assert r["grad_diff"] < 1e-6
        assert abs(r["global_norm"] - r["gathered_norm"]) < 1e-5 * max(1.0, r["gathered_norm"])
        assert abs(r["clip_total"] - r["gathered_norm"]) < 1e-5 * max(1.0, r["gathered_norm"])
        assert abs(r["clip_scale"] - 0.25) < 1e-5  # every rank's shard scaled by max_norm / global norm
        assert abs(r["norm_after_clip"] - r["gathered_norm"] / 4) < 1e-5 * max(1.0, r["gathered_norm"])
        assert r["ema_diff"] < 1e-6 and r["ema_moved"] > 1e-3
        assert r["bf16_rel_error"] < 0.1 and r["bf16_dtypes"] == ["torch.float32"]
    assert ranks[0]["gathered_norm"] == ranks[1]["gathered_norm"]
