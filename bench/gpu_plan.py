"""`bench/gpu.sh --plan`: what each section of the GPU benchmark will run and how long it should take on an
H100, before any device time is spent. Runs on a CPU in under a minute.

Forward counts follow from the sections' block counts (bench.gpu.SECTIONS) and the rollout's rules (PSB
steps + one cache write per block, one re-encode per URCR reset). The work of each kind of forward is
measured here: torch's FlopCounterMode over the 1.3B DiT (and the Wan VAE decoder when diffusers is
installed) at 480x832 on the meta device. Time = FLOPs / (peak x assumed utilisation) + the stated fixed
costs; every assumption is printed with the plan so that the first GPU run can correct it.
"""
from __future__ import annotations

import json
import time

import torch

H100_BF16_PEAK = 989e12  # FLOP/s, dense bf16 tensor cores (H100 SXM datasheet)
ASSUME = {
    "dit_utilisation": 0.35,  # of peak, eager bf16 DiT forwards at 4.7k query tokens
    "vae_utilisation": 0.20,  # of peak, the Wan VAE's 3-D convolutions (cuDNN, bf16)
    "vae_decode_s_if_uncounted": 0.15,  # per 3-latent-frame block when diffusers is missing here
    "process_start_s": 20.0,  # python, torch, CUDA context, nvidia-smi, wheel install
    "build_s": 8.0,  # per section: 1.3B DiT + VAE + wav2vec2 with random init on the device
    "first_compile_s": 25.0,  # inductor, first graph of a 1.3B block
    "next_compile_s": 10.0,  # each further shape (Triton kernels of the same sizes are reused)
    "capture_s": 0.5,  # one CUDA graph capture (2 warm-up calls + capture)
    "train_stage_overhead_s": 8.0,  # per training stage: networks, Lightning, optimizer state
    "backward_factor": 3.0,  # forward + backward with gradient checkpointing, in forwards
}


def dit_flops(height: int = 480, width: int = 832, fpb: int = 3, window: int = 3) -> dict:
    """FLOPs of each kind of 1.3B DiT forward, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    h, w = height // 8, width // 8
    with torch.device("meta"), torch.no_grad():
        m = AvatarDiT(config=get_preset("wan2.1-1.3b")).eval().requires_grad_(False)
        cfg = m.config
        cache = m.new_cache(window, h, w, block_frames=fpb)
        m.prefill(cache, torch.randn(1, cfg.in_channels, 1, h, w), None, 1, h // 2, w // 2)
        tokens = m.audio_tokens(torch.randn(1, 4 * fpb, cfg.audio_window, cfg.audio_feature_dim), starts_at_zero=False)
        x = torch.randn(1, cfg.in_channels, fpb, h, w)
        m.forward_cached(x, torch.zeros(1), list(range(fpb)), cache, tokens, write_frames=list(range(fpb)))

        def count(fn) -> float:
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            return float(counter.get_total_flops())

        pos = list(range(fpb, 2 * fpb))
        clip = torch.randn(1, cfg.in_channels, 21, h, w)
        audio = torch.randn(1, 81, cfg.audio_window, cfg.audio_feature_dim)
        ref = torch.randn(1, cfg.in_channels, 1, h, w)
        return {"block_forward": count(lambda: m.forward_cached(x, torch.zeros(1), pos, cache, m.block_audio(tokens))),
                "write_forward": count(lambda: m.forward_cached(x, torch.zeros(1), pos, cache, tokens,
                                                                write_frames=pos, write_only=True)),
                "clip_forward_bidirectional": count(lambda: m(clip, torch.zeros(1), audio=audio, ref=ref)),
                "clip_forward_causal": count(lambda: m(clip, torch.zeros(1), audio=audio, ref=ref,
                                                       frames_per_block=fpb))}


def vae_block_flops(height: int = 480, width: int = 832, fpb: int = 3) -> float | None:
    """FLOPs of decoding one steady block with the Wan2.1 VAE decoder (None without diffusers)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        return None
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), torch.no_grad():
        vae = AutoencoderKLWan().eval().requires_grad_(False)
        counter = FlopCounterMode(display=False)
        with counter:
            vae.decode(torch.randn(1, 16, fpb, height // 8, width // 8))
    return float(counter.get_total_flops())


def stream_forwards(blocks: int, psb: list[int], max_frames: int, keep: int, fpb: int) -> int:
    """Block forwards of a stream of `blocks` blocks: each block's PSB steps, its cache write, and one
    re-encode of the kept frames at every URCR reset."""
    steps = sum(psb[min(i, len(psb) - 1)] + 1 for i in range(blocks))
    first, later = max_frames // fpb, (max_frames - keep) // fpb
    resets = 0 if blocks <= first else 1 + (blocks - first - 1) // later
    return steps + resets


def _stream_section(name: str, spec: dict, flops: dict, vae_s: float, rate: float) -> dict:
    psb, fpb = spec["psb"], spec["fpb"]
    forwards = sum(stream_forwards(n, psb, spec["max_frames"], spec["keep"], fpb)
                   for n in (spec["warmup_blocks"], spec["blocks"]))
    blocks = spec["warmup_blocks"] + spec["blocks"]
    compute = forwards * flops["block_forward"] / rate + blocks * vae_s * spec.get("decode", 1)
    fixed = ASSUME["build_s"]
    graphs = spec.get("graphs", 0)
    if spec.get("compiled"):
        fixed += ASSUME["first_compile_s"] + ASSUME["next_compile_s"] * (spec["compiled_shapes"] - 1)
    if graphs:
        fixed += ASSUME["capture_s"] * graphs
    return {"section": name, "blocks": blocks, "block_forwards": forwards, "compute_s": compute, "fixed_s": fixed,
            "estimate_s": compute + fixed}


def _train_section(flops: dict, rate: float, spec: dict) -> dict:
    back = ASSUME["backward_factor"]
    bidir, causal, block = flops["clip_forward_bidirectional"], flops["clip_forward_causal"], flops["block_forward"]
    rollout_blocks = spec["clip_frames"] // spec["fpb"]
    rollout = stream_forwards(rollout_blocks, spec["psb"], 10**6, 0, spec["fpb"]) * block
    teacher = spec["steps"]["teacher"] * back * bidir
    # ODE init: step 0 samples the teacher (levels x substeps x 2 guidance forwards), later steps read the cache
    ode = spec["levels"] * spec["substeps"] * 2 * bidir + spec["steps"]["ode_init"] * back * causal
    # Self-Forcing, critic_steps 2: a generator+critic step and a critic-only step, each a rollout, DMD's teacher
    # (2 guidance forwards) and critic forwards on the clip, and the backward passes
    sf = 2 * rollout + rollout_blocks * back * block + 2 * bidir + 2 * back * causal + causal
    total = teacher + ode + sf
    fixed = 3 * ASSUME["train_stage_overhead_s"]
    return {"section": "train", "clip_forwards": {"teacher": spec["steps"]["teacher"] * back,
                                                  "ode_init_teacher_sampling": spec["levels"] * spec["substeps"] * 2,
                                                  "ode_init_student": spec["steps"]["ode_init"] * back},
            "rollout_block_forwards": 2 * rollout / block, "compute_s": total / rate, "fixed_s": fixed,
            "estimate_s": total / rate + fixed}


def plan(sections: dict, cap_s: float = 450.0) -> dict:
    """The plan of a full run: per section its forwards and estimated seconds, their sum against the cap."""
    start = time.perf_counter()
    flops = dit_flops()
    vae = vae_block_flops()
    rate = H100_BF16_PEAK * ASSUME["dit_utilisation"]
    vae_s = vae / (H100_BF16_PEAK * ASSUME["vae_utilisation"]) if vae else ASSUME["vae_decode_s_if_uncounted"]
    rows = [{"section": "start", "estimate_s": ASSUME["process_start_s"], "compute_s": 0.0,
             "fixed_s": ASSUME["process_start_s"]}]
    for name, spec in sections.items():
        if name == "train":
            rows.append(_train_section(flops, rate, spec))
        else:
            rows.append(_stream_section(name, spec, flops, vae_s, rate))
    total = sum(r["estimate_s"] for r in rows)
    return {"device_assumed": "H100 SXM 80 GB (nvidia-h100-x1)", "bf16_peak_flops": H100_BF16_PEAK,
            "assumptions": ASSUME, "tflop": {k: v / 1e12 for k, v in flops.items()},
            "vae_decode_block_tflop": vae / 1e12 if vae else None, "vae_decode_block_s": vae_s,
            "sections": rows, "total_s": total, "cap_s": cap_s, "fits": total <= cap_s,
            "counted_in_s": time.perf_counter() - start}


def plan_text(result: dict) -> str:
    lines = [f"plan for {result['device_assumed']}: bf16 peak {result['bf16_peak_flops'] / 1e12:.0f} TFLOP/s, "
             f"DiT at {ASSUME['dit_utilisation']:.0%}, VAE at {ASSUME['vae_utilisation']:.0%} of it",
             "TFLOP per forward (counted here, meta device): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                          result["tflop"].items())
             + f"; Wan VAE decode of a block {_num(result['vae_decode_block_tflop'])}",
             "| section | blocks | forwards | compute s | fixed s | estimate s |", "|---|---|---|---|---|---|"]
    for r in result["sections"]:
        forwards = r.get("block_forwards", r.get("clip_forwards", ""))
        if isinstance(forwards, dict):
            forwards = ", ".join(f"{k} {v:g}" for k, v in forwards.items()) + \
                f", rollout blocks {r['rollout_block_forwards']:g}"
        lines.append(f"| {r['section']} | {r.get('blocks', '')} | {forwards} | {r['compute_s']:.1f} | "
                     f"{r['fixed_s']:.1f} | {r['estimate_s']:.1f} |")
    lines.append(f"total {result['total_s']:.0f} s of the {result['cap_s']:.0f} s cap: "
                 f"{'fits' if result['fits'] else 'DOES NOT FIT'}")
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.1f} TFLOP" if isinstance(value, (int, float)) else "not counted (no diffusers here)"


def print_plan(sections: dict, cap_s: float = 450.0) -> int:
    result = plan(sections, cap_s)
    print(plan_text(result))
    print(json.dumps({"plan": result}, default=str))
    return 0 if result["fits"] else 1


__all__ = ["ASSUME", "H100_BF16_PEAK", "plan", "print_plan", "stream_forwards"]
