"""`lit-avatar bench stream`: how fast, how steady and how bounded streaming is.

Two measurements, both with random weights (speed does not depend on their values):

1. Streaming: AvatarStreamer (audio features + rollout with PSB/MCI/URCR + causal decode) over N latent
   frames. Per-block latency by position (first block, steady state, blocks at a cache reset, blocks
   100-200 vs the last 100), video frames/s, time to first frame, and RSS sampled after every block
   (/proc/self/statm) plus the kernel's peak (getrusage): bounded memory means the peak stays at the
   value reached after the first URCR reset.
2. KV cache vs recomputation at a fixed horizon (21 latent frames): per block, the cached rollout runs
   `steps` forwards of one block against the cached context plus one cache write; the baseline runs
   `steps` masked full forwards over [context | block] (model.forward with frames_per_block). Both are
   timed alternately in the same process so their ratio is not skewed by machine load.

What a user runs: `--vae wan --audio wav2vec2` build the real Wan VAE (diffusers AutoencoderKLWan, Wan2.1
config) and wav2vec2-base (transformers) architectures with random weights; the DiT runs with the
inference settings of `lit-avatar generate` (bf16 on CUDA by default, TF32, optional --compile). Each
streamed block's time is split into audio features, DiT (rollout) and VAE decode, with p50/p90/p99, and
on CUDA the allocator's memory is sampled after every block (flat after the first URCR reset).
Without those flags only torch (and numpy) are needed, and the stand-ins are reported in the JSON:
MelAudioEncoder instead of wav2vec2, a PatchVAE (or no VAE with --vae none) instead of the Wan VAE.
"""
from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

from bench.options import add_model_options
from lit_avatar.command import CommandParser, Namespace, int_list
from lit_avatar.errors import UserError, output_file

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> CommandParser:
    parser = CommandParser(prog="lit-avatar bench stream", description=__doc__.split("\n\n")[0])
    add_model_options(parser, preset="tiny", height=32, width=32, latent_frames=10000,
                      latent_frames_help="latent frames to stream")
    parser.add_argument("--horizon", type=int, default=21, help="URCR max_frames and the KV-vs-recompute horizon")
    parser.add_argument("--compare-blocks", type=int, default=10, help="blocks timed per method for KV vs recompute "
                        "(0 skips the comparison)")
    parser.add_argument("--vae", choices=["patch", "wan", "none"], default="patch",
                        help="wan: the Wan VAE architecture (diffusers, random weights); patch: PatchVAE decode "
                        "(stand-in unless tiny); none: DiT + rollout only")
    parser.add_argument("--audio", choices=["mel", "wav2vec2"], default="mel",
                        help="wav2vec2: the wav2vec2 architecture (transformers, random weights); mel: log-mel")
    parser.add_argument("--scale", choices=["full", "tiny"], default="full",
                        help="configs of --vae wan / --audio wav2vec2: full (Wan2.1 VAE, wav2vec2-base) or tiny (CI)")
    parser.add_argument("--dtype", choices=["auto", *sorted(_DTYPES)], default="auto",
                        help="weights' dtype; auto: bfloat16 on CUDA, float32 on CPU (what generate uses)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop the measured stream after this many seconds (recorded as stopped_early)")
    parser.add_argument("--warmup-blocks", type=int, default=0,
                        help="blocks streamed first on a separate stream (kernels, autotuning, compilation) and "
                        "reported apart, so the measured stream's first frame is a warm start")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each DiT block (as generate --compile)")
    parser.add_argument("--cuda-graphs", action="store_true", help="denoising forwards replayed from CUDA graphs "
                        "(as generate --cuda-graphs; on a CPU the eager stand-in, for tests)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """The kernel's high-water mark of this process's RSS (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class NullVAE(torch.nn.Module):
    """No VAE: zero reference latent, 'decoding' returns a 1x1 frame per video frame that depends on the
    latents (so the host copy still waits for the device). Times the DiT + rollout alone."""

    def __init__(self, latent_channels: int, temporal_factor: int, spatial_factor: int) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.temporal_factor, self.spatial_factor = temporal_factor, spatial_factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = video.shape
        sf = self.spatial_factor
        return video.new_zeros(b, self.latent_channels, 1 + (t - 1) // self.temporal_factor, h // sf, w // sf)

    def stream_decoder(self):
        state = {"started": False}

        def decode(latents: torch.Tensor) -> torch.Tensor:
            t = latents.shape[2]
            frames = self.temporal_factor * t - (0 if state["started"] else self.temporal_factor - 1)
            state["started"] = True
            return latents.float().mean().reshape(1, 1, 1, 1, 1).expand(1, 3, frames, 1, 1).tanh()

        return decode


# Small configs of the real architectures for --scale tiny (CI, the dry run of bench/gpu.sh).
TINY_WAN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                    temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
TINY_WAV2VEC2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     conv_dim=(32,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)


def wan_vae(scale: str, device: torch.device, dtype: torch.dtype):
    """The real Wan VAE architecture with random weights: diffusers' AutoencoderKLWan defaults are the
    Wan2.1 config (base_dim 96, z 16, dim_mult 1,2,4,4, 2 res blocks, 4x time, 8x space)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise UserError("--vae wan needs diffusers (GPU machines: `make gpu-wheels` here, carry .whl)") from None
    from lit_avatar.models.vae import WanVAE

    with device:
        vae = AutoencoderKLWan(**(TINY_WAN_VAE if scale == "tiny" else {}))
    return WanVAE.from_model(vae if dtype == torch.float32 else vae.to(dtype=dtype)).to(device)


def wav2vec2_encoder(scale: str, device: torch.device, dtype: torch.dtype):
    """The real wav2vec2 architecture with random weights: transformers' Wav2Vec2Config defaults are
    wav2vec2-base (12 layers x 768, 7 conv layers, 128-tap positional conv); all layers stacked."""
    from transformers import Wav2Vec2Config

    from lit_avatar.models.audio import Wav2Vec2AudioEncoder

    config = Wav2Vec2Config(**(TINY_WAV2VEC2 if scale == "tiny" else {}))
    with device:
        encoder = Wav2Vec2AudioEncoder.from_config(config, layers="all")
    return encoder.to(dtype=dtype)


def build_parts(args: Namespace):
    """(model, vae, encoder, labels): random weights; the real Wan VAE and wav2vec2 architectures with
    --vae wan --audio wav2vec2, stand-ins otherwise (reported under `stand_ins`)."""
    from lit_avatar.inference.fast_path import cast_for_inference, compile_blocks, resolve_dtype
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    base = get_preset(args.preset)
    tf = base.temporal_factor
    spatial = 2 if args.preset in ("tiny", "micro") else 8
    labels = {}
    overrides = {}
    if args.vae == "wan":
        vae = wan_vae(args.scale, device, dtype)
        labels["vae"] = (f"WanVAE: AutoencoderKLWan {'tiny' if args.scale == 'tiny' else 'Wan2.1'} config, "
                         "random weights, causal stream decode")
        overrides.update(in_channels=vae.latent_channels, out_channels=vae.latent_channels,
                         temporal_factor=vae.temporal_factor)
    elif args.vae == "patch":
        vae = PatchVAE(spatial_factor=spatial, temporal_factor=tf)
        if vae.latent_channels != base.in_channels:
            overrides.update(in_channels=vae.latent_channels, out_channels=vae.latent_channels)
            labels["vae"] = (f"PatchVAE stand-in (sf={spatial}, tf={tf}): DiT in/out channels {vae.latent_channels} "
                             f"instead of {base.in_channels}")
        else:
            labels["vae"] = f"PatchVAE (sf={spatial}, tf={tf})"
    else:
        vae = NullVAE(base.in_channels, tf, spatial)
        labels["vae"] = "none: DiT + rollout only, decode skipped"
    if args.audio == "wav2vec2":
        encoder = wav2vec2_encoder(args.scale, device, dtype)
        overrides["audio_feature_dim"] = encoder.feature_dim
        labels["audio"] = (f"Wav2Vec2AudioEncoder: {'tiny' if args.scale == 'tiny' else 'wav2vec2-base'} config, "
                           f"random weights, all layers ({encoder.feature_dim} features), per block over the window")
    else:
        n_mels = base.audio_feature_dim if base.audio_feature_dim <= 128 else 40
        encoder = MelAudioEncoder(n_mels=n_mels, normalize=False)
        if n_mels != base.audio_feature_dim:
            overrides["audio_feature_dim"] = n_mels
            labels["audio"] = (f"MelAudioEncoder stand-in ({n_mels} mels) for wav2vec2 "
                               f"({base.audio_feature_dim} features)")
        else:
            labels["audio"] = f"MelAudioEncoder ({n_mels} mels)"
    torch.manual_seed(args.seed)
    with device:  # build in place on the device (1.3B: no host copy)
        model = AvatarDiT(config=get_preset(args.preset, **overrides))
    cast_for_inference(dtype, model)
    model = model.eval().requires_grad_(False)
    for block in model.blocks:  # the audio path's output projection starts at zero; give it work to do
        if hasattr(block, "audio_attn"):
            torch.nn.init.normal_(block.audio_attn.o.weight, std=0.02)
    if args.compile:
        compile_blocks(model)
        labels["compile"] = "torch.compile per DiT block (inductor default mode, static shapes)"
    if args.cuda_graphs:
        from lit_avatar.inference.cuda_graphs import CUDAGraphDiT

        model = CUDAGraphDiT(model)
        labels["cuda_graphs"] = ("CUDA graphs for the steady-state denoising forwards" if device.type == "cuda"
                                 else "CPU stand-in of the CUDA graph bookkeeping (eager replay)")
    return model, vae, encoder, labels


def rollout_options(args: Namespace, context_frames: int | None = None, urcr: bool = True):
    from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions

    steps = int_list(args.psb_steps, "--psb-steps")
    return RolloutOptions(frames_per_block=args.frames_per_block, context_frames=context_frames,
                          psb=PSBOptions(steps=steps), urcr=URCROptions(enabled=urcr, max_frames=args.horizon))


def warmup_blocks_for(options) -> int:
    """Blocks after which a stream meets no new (positions, context length, step list) combination, so no
    new CUDA graph or compiled shape: the first URCR cycle (PSB's longer lists included), then one cycle after
    a reset (every later cycle repeats it: the cleared ring is refilled from its first slot)."""
    fpb, urcr = options.frames_per_block, options.urcr
    if not urcr.enabled:  # until the ring is full and the steady step list has run
        return max(len(options.psb.steps), math.ceil(options.window / fpb)) + 1
    return max(urcr.max_frames // fpb + (urcr.max_frames - urcr.keep_frames) // fpb, len(options.psb.steps) + 1)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def _audio_chunk(rng: np.random.Generator, pushed: int, chunk: int) -> np.ndarray:
    t = (pushed + np.arange(chunk)) / 16000
    return (0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t))
            + 0.01 * rng.standard_normal(chunk)).astype(np.float32)


def _gpu_allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def graph_counts(model) -> dict:
    """CUDA graph captures/replays so far (CUDAGraphDiT) and torch.compile's compiled frames and graph breaks
    (torch._dynamo counters); zeros for what is not in use."""
    counts = {"graph_captures": getattr(model, "captures", 0), "graph_replays": getattr(model, "replays", 0),
              "graph_capture_s": getattr(model, "capture_seconds", 0.0)}
    try:
        from torch._dynamo.utils import compilation_time_metrics, counters
    except ImportError:  # a torch without dynamo: nothing was compiled
        return {**counts, "compiled_frames": 0, "graph_breaks": 0, "compile_s": 0.0}
    return {**counts, "compiled_frames": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            # dynamo's own timer of every compilation (tracing + inductor), apart from the captures
            "compile_s": float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))}


def _counts_since(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def warmup_section(args: Namespace, model, vae, encoder) -> tuple[dict, object]:
    """A short stream of its own before the measured one: CUDA kernels load, cuDNN picks its algorithms,
    torch.compile compiles, CUDA graphs are captured; its first-frame time is the cold start a user sees once
    per process. Returns its figures and its KV cache, in which the measured stream starts (same buffers: the
    graphs captured here replay there, so no capture falls inside the timer)."""
    from lit_avatar.inference.streamer import AvatarStreamer

    ref = np.random.default_rng(args.seed + 7).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    before = graph_counts(model)
    start = time.perf_counter()
    streamer = AvatarStreamer(model, vae, encoder, rollout_options(args), ref, seed=args.seed + 7, device=args.device)
    rng, pushed = np.random.default_rng(args.seed + 8), 0
    while streamer.blocks_done < args.warmup_blocks:
        streamer.push_audio(_audio_chunk(rng, pushed, 3200))
        pushed += 3200
    _sync(torch.device(args.device))
    return {"blocks": streamer.blocks_done, "wall_s": time.perf_counter() - start,
            "time_to_first_frame_s": streamer.first_frame_seconds,
            "block_s": [r["seconds"] for r in streamer.latency],
            **_counts_since(before, graph_counts(model))}, streamer.rollout.cache


def stream_section(args: Namespace, model, vae, encoder, cache=None) -> dict:
    """Stream `latent_frames` latent frames; per-block latency, stage split, RSS and GPU memory per block.
    cache: the warm-up's KV cache to start in (its CUDA graphs replay here)."""
    from lit_avatar.inference.streamer import AvatarStreamer, block_span

    device = torch.device(args.device)
    options = rollout_options(args)
    tf, fpb = vae.temporal_factor, args.frames_per_block
    blocks = math.ceil(args.latent_frames / fpb)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ref = np.random.default_rng(args.seed).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    counts_before = graph_counts(model)
    streamer = AvatarStreamer(model, vae, encoder, options, ref, seed=args.seed, device=args.device, cache=cache)
    wall, rss, gpu = _push_until(args, streamer, blocks, device)
    records = list(streamer.latency)  # the last push may have made a block or two more than asked
    video_frames = sum(r["frames"] for r in records)
    seconds = [r["seconds"] for r in records]
    reset_idx = [i for i, r in enumerate(records) if r["reset"]]
    first_reset = reset_idx[0] if reset_idx else None
    warm = len(options.psb.steps)  # blocks before the steady state (PSB's longer step lists)
    steady_idx = [i for i in range(warm, len(records)) if not records[i]["reset"]]
    steady = [seconds[i] for i in steady_idx]
    mid = seconds[100:200]
    last = seconds[-100:]
    cpu = [r["cpu_seconds"] for r in records]
    frames_per_block = block_span(1, fpb, tf)[1]
    stages = {name: _percentiles([records[i][name] for i in steady_idx if name in records[i]])
              for name in ("audio_s", "dit_s", "vae_s")}
    steady_total = sum(stages[n]["p50"] or 0.0 for n in stages)
    result = {
        "latent_frames": len(records) * fpb, "blocks": len(records), "video_frames": video_frames, "wall_s": wall,
        "stopped_early": streamer.blocks_done < blocks,
        "frames_per_second": video_frames / wall,
        "steady_frames_per_second": frames_per_block / _median(steady) if steady else None,
        "time_to_first_frame_s": streamer.first_frame_seconds,
        "latency_s": {
            "first_block": seconds[0], "steady_median": _median(steady),
            "steady_p90": float(np.percentile(steady, 90)) if steady else None,
            "steady": _percentiles(steady),
            "reset_median": _median([seconds[i] for i in reset_idx]), "reset_blocks": len(reset_idx),
            "blocks_100_200_median": _median(mid), "last_100_median": _median(last),
            "last_100_vs_100_200": (_median(last) / _median(mid)) if len(mid) == 100 else None,
            "max": max(seconds),
        },
        # where a steady block's time goes (device time of each stage on CUDA, host time on a CPU)
        "stages_s": stages,
        "stage_share_of_median": {n: (stages[n]["p50"] / steady_total if steady_total and stages[n]["p50"] is not None
                                      else None) for n in stages},
        # CPU time per block (all threads of this process): the same comparison without other processes' load
        "cpu_latency_s": {
            "steady_median": _median([cpu[i] for i in steady_idx]),
            "blocks_100_200_median": _median(cpu[100:200]), "last_100_median": _median(cpu[-100:]),
            "last_100_vs_100_200": (_median(cpu[-100:]) / _median(cpu[100:200])) if len(cpu) >= 200 else None,
        },
        "rss_bytes": _rss_figures(rss, first_reset),
        "bounded_state_end": streamer.memory_state(),
        # graph captures and compilations inside the measured stream (0 once the warm-up did them all)
        **_counts_since(counts_before, graph_counts(model)),
    }
    if device.type == "cuda":
        result["gpu_memory_bytes"] = _gpu_figures(device, gpu, first_reset)
    return result


def _push_until(args: Namespace, streamer, blocks: int, device: torch.device) -> tuple[float, list, list]:
    """Push 0.2 s audio chunks until `blocks` blocks are made (or --max-seconds passes): wall seconds, and the RSS
    and GPU memory after the push that made each block."""
    rng = np.random.default_rng(args.seed + 1)
    chunk = 3200  # 0.2 s, what a live source might deliver
    rss, gpu, pushed = [], [], 0
    start = time.perf_counter()
    while streamer.blocks_done < blocks:
        audio = _audio_chunk(rng, pushed, chunk)
        pushed += chunk
        before = streamer.blocks_done
        streamer.push_audio(audio)
        made = streamer.blocks_done - before
        rss.extend([rss_bytes()] * made)  # RSS after the push that made each block
        gpu.extend([_gpu_allocated(device)] * made)  # allocator's view: no device synchronisation
        if not args.quiet and streamer.blocks_done // 500 != before // 500:
            print(f"  block {streamer.blocks_done}/{blocks}", file=sys.stderr)
        if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
            break
    return time.perf_counter() - start, rss, gpu


def _rss_figures(rss: list[int], first_reset: int | None) -> dict:
    after_reset = rss[first_reset] if first_reset is not None else None
    peak_sampled = max(rss) if rss else None
    return {
        "after_first_reset": after_reset, "peak_sampled": peak_sampled, "end": rss[-1] if rss else None,
        "peak_process": peak_rss_bytes(),
        "peak_process_over_after_first_reset": (peak_rss_bytes() / after_reset) if after_reset else None,
        "peak_over_after_first_reset": (peak_sampled / after_reset) if after_reset else None,
        "end_over_after_first_reset": (rss[-1] / after_reset) if after_reset else None,
        "at_block_100": rss[100] if len(rss) > 100 else None,
        "peak_over_block_100": (peak_sampled / rss[100]) if len(rss) > 100 else None,
    }


def _gpu_figures(device: torch.device, gpu: list[int], first_reset: int | None) -> dict:
    after = gpu[first_reset] if first_reset is not None else None
    return {
        "peak_allocated": torch.cuda.max_memory_allocated(device),
        "peak_reserved": torch.cuda.max_memory_reserved(device),
        "allocated_after_first_reset": after,
        "allocated_max_after_first_reset": max(gpu[first_reset:]) if after else None,
        "growth_after_first_reset": (max(gpu[first_reset:]) / after - 1.0) if after else None,
        "allocated_end": gpu[-1],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_section(args: Namespace, model, vae) -> dict:
    """Per-block time at a full `horizon`-frame context: KV-cached rollout vs masked full recomputation."""
    from lit_avatar.inference.rollout import Rollout

    device = torch.device(args.device)
    fpb, horizon, tf = args.frames_per_block, args.horizon, vae.temporal_factor
    context = horizon - fpb
    options = rollout_options(args, context_frames=context, urcr=False)
    steps = options.psb.steps[-1]
    sf = vae.spatial_factor
    h, w = args.height // sf, args.width // sf
    c = model.config.in_channels
    g = torch.Generator(device=device).manual_seed(args.seed)
    dtype = next(model.parameters()).dtype
    ref = torch.randn(1, c, 1, h, w, generator=g, device=device)
    feats_block = torch.randn(1, tf * fpb, model.config.audio_window, model.config.audio_feature_dim,
                              generator=g, device=device)
    feats_full = torch.randn(1, 1 + tf * (horizon - 1), model.config.audio_window, model.config.audio_feature_dim,
                             generator=g, device=device)
    rollout = Rollout(model, options)
    sigmas = rollout.sigmas_for(len(options.psb.steps))  # a steady-state block's list
    cached_s, full_s = [], []
    with torch.inference_mode():
        rollout.begin(ref, None, 1, (h, w), generator=g)
        tokens = model.audio_tokens(feats_block, starts_at_zero=False)
        while rollout.cache.num_frames < context:  # fill the window to the full horizon
            rollout.next_block(tokens, shape=(1, c, fpb, h, w))
        history = torch.randn(1, c, context, h, w, generator=g, device=device)
        positions = torch.arange(horizon, device=device)
        for _ in range(args.compare_blocks + 1):  # the first round of each is a warm-up
            _sync(device)
            begin = time.perf_counter()
            rollout.next_block(tokens, shape=(1, c, fpb, h, w))
            _sync(device)
            cached_s.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            x = torch.randn(1, c, fpb, h, w, generator=g, device=device)
            for j in range(steps):
                s = float(sigmas[j])
                timestep = torch.zeros(1, horizon, device=device)
                timestep[:, context:] = 1000.0 * s
                v = model(torch.cat([history, x], dim=2), timestep, audio=feats_full, ref=ref,
                          frames_per_block=fpb, frame_positions=positions)[:, :, context:]
                x0 = x - s * v
                x = (1 - float(sigmas[j + 1])) * x0 + float(sigmas[j + 1]) * torch.randn_like(x0)
            _sync(device)
            full_s.append(time.perf_counter() - begin)
    cached, full = _median(cached_s[1:]), _median(full_s[1:])
    return {"horizon_latent_frames": horizon, "context_frames": context, "steps_per_block": steps,
            "cached_forwards_per_block": steps + 1, "recompute_forwards_per_block": steps,
            "kv_cached_block_s": cached, "recompute_block_s": full, "speedup": full / cached,
            "blocks_timed": args.compare_blocks, "dtype": str(dtype).removeprefix("torch.")}


def main(argv: list[str]) -> int:
    """Run the streaming benchmark and print its JSON (see --help)."""
    args = build_parser().parse(argv)
    int_list(args.psb_steps, "--psb-steps")
    if args.out:
        output_file(args.out, "--out")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    if args.latent_frames < args.frames_per_block:
        raise UserError(f"--latent-frames {args.latent_frames}: expected at least one block ({args.frames_per_block})")
    if args.threads:
        torch.set_num_threads(args.threads)
    from lit_avatar.inference.fast_path import configure_device, resolve_dtype

    fast = configure_device(args.device)
    model, vae, encoder, labels = build_parts(args)
    result = {
        "benchmark": "stream", "preset": args.preset, "height": args.height, "width": args.width,
        "device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else
        _cpu_name(), "dtype": str(resolve_dtype(args.dtype, args.device)).removeprefix("torch."), **fast,
        "compile": bool(args.compile), "cuda_graphs": bool(args.cuda_graphs), "audio": args.audio, "vae": args.vae,
        "threads": torch.get_num_threads(), "psb_steps": args.psb_steps,
        "frames_per_block": args.frames_per_block, "temporal_factor": vae.temporal_factor,
        "parameters": sum(p.numel() for p in model.parameters()), "stand_ins": labels,
        "load_average_start": os.getloadavg(), "command": "lit-avatar bench stream " + " ".join(argv),
    }
    # Streaming first: the process's peak RSS then belongs to streaming, not to the full-context baseline.
    cache = None
    if args.warmup_blocks:
        result["warmup"], cache = warmup_section(args, model, vae, encoder)
    result["stream"] = stream_section(args, model, vae, encoder, cache)
    if args.compare_blocks:
        result["kv_vs_recompute"] = compare_section(args, model, vae)
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from lit_avatar.data.atomic import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:  # no /proc (macOS, Windows): the JSON then names the machine "cpu xN", visibly
        pass
    return f"cpu x{os.cpu_count()}"


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
