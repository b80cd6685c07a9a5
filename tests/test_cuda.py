"""The streaming fast path on the device it is made for: bf16 against fp32, CUDA-graph replay against eager,
and the steady block loop on fused attention kernels without a host-device sync (what bench/gpu.py's checks
report at full size). Tiny preset, seconds on a GPU; `pytest -m requires_cuda` there, skipped elsewhere."""
from __future__ import annotations

import copy

import pytest
import torch

from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset

pytestmark = pytest.mark.requires_cuda

CUDA = "cuda"
# 2-frame blocks, PSB [3, 2], a URCR reset every 3 blocks: 10 blocks visit every code path of the loop
OPTIONS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[3, 2]),
                         urcr=URCROptions(max_frames=6, keep_frames=2))
LATENT = (1, 12, 2, 16, 16)  # [B, C, frames_per_block, h, w] of the tiny preset


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 as the reference, not TF32 (`lit-avatar generate` on CUDA turns TF32 on for the process)."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


def tiny_model(dtype: torch.dtype = torch.float32) -> AvatarDiT:
    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset("tiny")).eval().requires_grad_(False)
    for block in model.blocks:  # a live audio path, so it is part of every comparison
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    return model.to(device=CUDA, dtype=dtype)


def inputs(blocks: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Reference latent, audio features and per-block noise, drawn on the CPU (the same on any device)."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(1, 12, 1, 16, 16, generator=g)
    feats = torch.randn(1, 2 * blocks, 5, 40, generator=g)
    noises = [torch.randn(LATENT, generator=g) for _ in range(blocks)]
    return ref.to(CUDA), feats.to(CUDA), [n.to(CUDA) for n in noises]


def stream(model, blocks: int, seed: int = 1, cache=None, rollouts: list | None = None) -> list[torch.Tensor]:
    """The rollout's blocks from fixed noise; the MCI context noise drawn from a generator seeded alike.
    cache: a finished stream's cache to start in; rollouts: collects the Rollout (its cache, for the next)."""
    ref, feats, noises = inputs(blocks, seed)
    rollout = Rollout(model, OPTIONS)
    if rollouts is not None:
        rollouts.append(rollout)
    with torch.inference_mode():
        rollout.begin(ref, None, 1, LATENT[-2:], generator=torch.Generator(device=CUDA).manual_seed(seed),
                      cache=cache)
        tokens = model.audio_tokens(feats)
        return [rollout.next_block(tokens[:, 2 * i:2 * i + 2], noise=noises[i]) for i in range(blocks)]


def test_bf16_rollout_matches_fp32_on_cuda():
    """As tests/test_cached_fast_path.py on the CPU, with CUDA's bf16 kernels (flash attention, tensor-core
    matmuls): relative L2 error per block within bf16's 1e-2 and not zero (bf16 was used)."""
    fp32 = tiny_model()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    for a, b in zip(stream(fp32, 6), stream(bf16, 6)):
        assert a.dtype == b.dtype == torch.float32 and a.device.type == CUDA  # fp32 latents between steps
        relative = ((a - b).norm() / a.norm()).item()
        assert 1e-4 < relative <= 1e-2, relative


def test_cuda_graph_replay_matches_eager():
    """Replayed graphs compute what the eager forwards compute, over two streams of 10 blocks (URCR resets
    included): a varying input not copied into the graph's static inputs, a graph replayed for the wrong
    positions, or a cache buffer moved after capture would change the frames."""
    from lit_avatar.inference.cuda_graphs import CUDAGraphDiT

    model = tiny_model()
    graphed = CUDAGraphDiT(model)
    for seed in (1, 2):  # a second stream: new cache, graphs rebuilt
        eager, replayed = stream(model, 10, seed), stream(graphed, 10, seed)
        for i, (a, b) in enumerate(zip(eager, replayed)):
            where = f"stream {seed}, block {i}"
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=lambda m, where=where: f"{where}: {m}")
    # per stream 21 denoising forwards (3 + 9 x 2 steps); URCR cycles the positions, so 3 graphs serve them
    assert graphed.replays == 2 * 21 and graphed.captures == 2 * 3


def test_cuda_graphs_captured_in_one_stream_replay_in_the_next_started_in_its_cache():
    """bench stream's warm-up/measured pair on real graphs: the second stream, started in the first one's
    cache, captures nothing and its frames equal eager ones (a stale buffer address would change them)."""
    from lit_avatar.inference.cuda_graphs import CUDAGraphDiT

    model = tiny_model()
    graphed = CUDAGraphDiT(model)
    rollouts: list = []
    stream(graphed, 10, 1, rollouts=rollouts)
    captures = graphed.captures
    replayed = stream(graphed, 10, 2, cache=rollouts[0].cache)
    eager = stream(model, 10, 2)
    assert captures == 3 and graphed.captures == captures
    for a, b in zip(eager, replayed):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_steady_blocks_use_fused_attention_and_never_sync():
    """After a warm-up that builds every table and step list, blocks (a URCR reset among them) run with the
    math SDPA fallback excluded and with CUDA's sync debug mode raising on any host-device synchronisation."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny_model(torch.bfloat16)
    ref, feats, _ = inputs(1)
    rollout = Rollout(model, OPTIONS)
    with torch.inference_mode():
        rollout.begin(ref, None, 1, LATENT[-2:], generator=torch.Generator(device=CUDA).manual_seed(0))
        tokens = model.audio_tokens(feats)
        for _ in range(3):  # every block index of the PSB list, and the positions after a reset
            rollout.next_block(tokens, shape=LATENT)
        torch.cuda.synchronize()
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            torch.cuda.set_sync_debug_mode("error")
            try:
                blocks = [rollout.next_block(tokens, shape=LATENT) for _ in range(4)]
            finally:
                torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert any(r.reset for r in list(rollout.records)[3:])
    assert all(torch.isfinite(b).all() for b in blocks)
