"""Everything `bench/gpu.sh` measures, in one process: the fast-path checks, the 1.3B streaming path as a user
runs it (with CUDA graphs, compiled with CUDA graphs, eager bf16), and training steps of each stage; one JSON,
then the BENCHMARKS.md rows.

    python -m bench.gpu --out runs/gpu_bench/gpu_bench.json      # on the GPU (bench/gpu.sh runs this)
    python -m bench.gpu --dry-run --out /tmp/gpu_bench.json      # the same code at tiny scale, any device
    python -m bench.gpu --rows runs/gpu_bench/gpu_bench.json     # print the rows of a finished run
    python -m bench.gpu --plan                                   # forwards and estimated H100 time per section

Sections run in order of importance (checks, graphs, compiled, eager, train) and each is bounded by a count
of blocks or steps (SECTIONS), not by a hoped-for time; the JSON is rewritten after each one, so a run stopped
by its time limit keeps what it finished; a section that fails records its error and the next one runs.
Every stream section streams a warm-up of its own first (compilation, graph captures, cuDNN autotuning) and
starts the measured stream in the warm-up's KV cache, so no capture falls inside the timer; captures and
compiles are counted per part, and the headline is the steady-state frames/s (median block).
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from lit_avatar.command import CommandParser
from lit_avatar.data.atomic import write_json_atomic
from lit_avatar.errors import existing_file, output_file

# the 1.3B configuration of the issue: 480x832, PSB 8,6,4, MCI, URCR (21-frame horizon), blocks of 3
FULL = {"preset": "wan2.1-1.3b", "height": "480", "width": "832", "scale": "full"}
# the same code at tiny scale (CI): micro DiT, tiny Wan VAE and wav2vec2 configs, 64x64
TINY = {"preset": "micro", "height": "64", "width": "64", "scale": "tiny"}
# what each section runs at full scale, in blocks of 3 latent frames (12 video frames) and training steps;
# URCR 21 with 3 kept frames resets at block 7 and then every 6 blocks: 13 warm-up blocks meet every shape
STREAM = {"psb": [8, 6, 4], "fpb": 3, "max_frames": 21, "keep": 3}
SECTIONS = {
    "checks": {**STREAM, "warmup_blocks": 0, "blocks": 7, "decode": 0},  # PSB's lists, fused-SDPA, sync checks
    "graphs": {**STREAM, "warmup_blocks": 13, "blocks": 25, "graphs": 16},
    "compiled": {**STREAM, "warmup_blocks": 13, "blocks": 25, "graphs": 16, "compiled": True,
                 "compiled_shapes": 6},
    "eager": {**STREAM, "warmup_blocks": 4, "blocks": 25},  # 25 blocks: 3 URCR resets
    # ODE init: one teacher substep, the trajectory cache (step 0 samples it, step 1 reads it); Self-Forcing with
    # critic_steps 2 (a generator+critic step, then a critic-only step)
    "train": {"psb": [8, 6, 4], "fpb": 3, "clip_frames": 21, "levels": 8, "substeps": 1,
              "steps": {"teacher": 2, "ode_init": 2, "self_forcing": 2}},
}


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu_bench/gpu_bench.json", help="result JSON (written atomically after "
                   "every section)")
    p.add_argument("--dry-run", action="store_true", help="tiny scale, few blocks, on whatever device is here")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--blocks", type=int, default=None, help="measured blocks per stream section (default: SECTIONS)")
    p.add_argument("--stream-seconds", type=float, default=120.0,
                   help="safety stop of a measured stream (recorded as stopped_early); the block count bounds it")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: checks,graphs,compiled,eager,train")
    p.add_argument("--rows", default=None, help="print the BENCHMARKS.md rows of this JSON and exit")
    p.add_argument("--plan", action="store_true", help="print each section's forwards and estimated H100 seconds "
                   "(FLOPs counted here on the meta device) and exit; exit 1 if the sum exceeds the 450 s cap")
    return p


def environment(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cuda": torch.version.cuda, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_memory_bytes=props.total_memory,
                    multiprocessors=props.multi_processor_count)
    for name in ("diffusers", "transformers", "lightning"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def stream_args(scale: dict, device: str, spec: dict, seconds: float, flags: tuple[str, ...],
                dry: bool) -> list[str]:
    """bench stream's arguments: the 1.3B path as a user runs it, `spec` one of SECTIONS; flags: --compile,
    --cuda-graphs. Compilation and graph captures happen in the warm-up, not in the measured stream."""
    psb, horizon, warmup, blocks = ",".join(map(str, spec["psb"])), spec["max_frames"], spec["warmup_blocks"], \
        spec["blocks"]
    if dry:  # blocks of 3 at 64x64, 2 PSB lists, URCR 9 (a reset at block 3, then every 2)
        psb, horizon, warmup, blocks = "2,1", 9, (5 if flags else 2), 4
    argv = ["--preset", scale["preset"], "--height", scale["height"], "--width", scale["width"],
            "--scale", scale["scale"], "--vae", "wan", "--audio", "wav2vec2", "--device", device,
            "--latent-frames", str(blocks * spec["fpb"]), "--frames-per-block", str(spec["fpb"]), "--psb-steps", psb,
            "--horizon", str(horizon), "--compare-blocks", "0", "--warmup-blocks", str(warmup),
            "--max-seconds", str(seconds), "--quiet"]
    return argv + list(flags)


def checks_section(scale: dict, device: str, dry: bool) -> dict:
    """On the real shapes: every cached forward runs on the flash/efficient SDPA kernels (the math
    fallback is excluded), and steady-state blocks run with CUDA's sync debug mode set to error (any
    host-device synchronisation inside the block loop raises)."""
    from bench.stream import build_parser as stream_parser
    from bench.stream import build_parts, rollout_options
    from lit_avatar.inference.rollout import Rollout

    args = stream_parser().parse(stream_args(scale, device, SECTIONS["checks"], 60, (), dry))
    model, vae, _, labels = build_parts(args)
    options = rollout_options(args)
    c = model.config.in_channels
    h, w = args.height // vae.spatial_factor, args.width // vae.spatial_factor
    g = torch.Generator(device=device).manual_seed(0)
    ref = torch.randn(1, c, 1, h, w, generator=g, device=device)
    tokens = model.audio_tokens(torch.randn(1, vae.temporal_factor * 3, 5, model.config.audio_feature_dim,
                                            generator=g, device=device), starts_at_zero=False)
    rollout = Rollout(model, options)
    out: dict = {"stand_ins": labels}
    with torch.inference_mode():
        rollout.begin(ref, None, 1, (h, w), generator=g)
        for _ in range(len(options.psb.steps) + 1):  # PSB's lists, then a steady block
            rollout.next_block(tokens, shape=(1, c, 3, h, w))
        if device.startswith("cuda"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            try:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
                    rollout.next_block(tokens, shape=(1, c, 3, h, w))
                torch.cuda.synchronize()
                out["fused_sdpa_only"] = "ok: flash/efficient kernels only"
            except RuntimeError as err:
                out["fused_sdpa_only"] = f"FAILED: {str(err).splitlines()[0][:300]}"
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(2):
                    rollout.next_block(tokens, shape=(1, c, 3, h, w))
                out["no_sync_in_block_loop"] = "ok: 2 steady blocks under set_sync_debug_mode('error')"
            except RuntimeError as err:
                out["no_sync_in_block_loop"] = f"FAILED: {str(err).splitlines()[0][:300]}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        else:
            rollout.next_block(tokens, shape=(1, c, 3, h, w))
            out["fused_sdpa_only"] = out["no_sync_in_block_loop"] = "not checked: CPU (tests cover the CPU side)"
    del model, vae, rollout
    return out


def stream_section(scale: dict, device: str, spec: dict, seconds: float, flags: tuple[str, ...],
                   dry: bool) -> dict:
    from bench.stream import main as stream_main

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_stream_{os.getpid()}_{len(flags)}.json"
    argv = stream_args(scale, device, spec, seconds, flags, dry) + ["--out", str(path)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its JSON goes to the file; stdout keeps the rows
        stream_main(argv)
    result = json.loads(path.read_text())
    path.unlink()
    result["section_wall_s"] = time.perf_counter() - start
    return result


def train_section(scale: dict, device: str, dry: bool) -> dict:
    from bench.train_step import main as train_main

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_train_{os.getpid()}.json"
    spec = SECTIONS["train"]
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_ode_cache_{os.getpid()}"
    argv = ["--preset", scale["preset"], "--height", scale["height"], "--width", scale["width"], "--device", device,
            "--out", str(path), "--steps", "2", "--teacher-substeps", str(spec["substeps"]), "--ode-cache", str(cache),
            "--psb-steps", ",".join(map(str, spec["psb"]))]
    if dry:  # micro DiT, a 3-latent-frame clip in 1-frame blocks
        argv += ["--latent-frames", "3", "--frames-per-block", "1", "--psb-steps", "1", "--audio-feature-dim", "16"]
    with contextlib.redirect_stdout(io.StringIO()):
        train_main(argv)
    result = json.loads(path.read_text())
    path.unlink()
    return result


def _gb(value) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, (int, float)) else "n/a"


def _fmt(value, spec: str = ".3f", unit: str = "") -> str:
    return f"{value:{spec}}{unit}" if isinstance(value, (int, float)) else "n/a"


def rows(result: dict) -> str:
    """The BENCHMARKS.md rows of a run."""
    env = result.get("environment", {})
    name = env.get("device_name", env.get("device", "?"))
    lines = [f"GPU run {env.get('started_utc', '?')} UTC on {name}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"diffusers {env.get('diffusers')}, transformers {env.get('transformers')}", "",
             f"DiT/VAE/wav2vec2 weights in {result.get('eager', {}).get('dtype', '?')}; "
             f"TF32 {result.get('eager', {}).get('tf32', '?')}", "",
             "| figure | --cuda-graphs | --compile --cuda-graphs | eager |", "|---|---|---|---|"]
    runs = [result.get(name, {}) for name in ("graphs", "compiled", "eager")]

    def both(fn) -> str:
        return f"| {fn[0]} | " + " | ".join(fn[1](r.get("stream", {}), r) for r in runs) + " |"

    def steady(s: dict, q: str):
        return s.get("latency_s", {}).get("steady", {}).get(q)

    def stage(s: dict, k: str):
        return s.get("stages_s", {}).get(k, {}).get("p50")

    def memory(s: dict, k: str):
        return s.get("gpu_memory_bytes", {}).get(k)

    def growth(s: dict) -> str:
        value = memory(s, "growth_after_first_reset")
        return _fmt(100 * value, ".2f", "%") if value is not None else "n/a"

    def counts(s: dict, r: dict, key: str) -> str:
        return f"{r.get('warmup', {}).get(key, 'n/a')} / {s.get(key, 'n/a')}"

    table = [
        ("**frames/s at steady state (median block), the headline**",
         lambda s, r: _fmt(s.get("steady_frames_per_second"), ".1f")),
        ("CUDA graph captures: warm-up / measured stream", lambda s, r: counts(s, r, "graph_captures")),
        ("compiled graphs: warm-up / measured stream", lambda s, r: counts(s, r, "compiled_frames")),
        ("graph breaks: warm-up / measured stream", lambda s, r: counts(s, r, "graph_breaks")),
        ("warm-up wall time; of it, compiles / captures",
         lambda s, r: f"{_fmt(r.get('warmup', {}).get('wall_s'), '.1f')} s; "
                      f"{_fmt(r.get('warmup', {}).get('compile_s'), '.1f')} / "
                      f"{_fmt(r.get('warmup', {}).get('graph_capture_s'), '.1f')} s"),
        ("latent frames streamed (stopped early?)",
         lambda s, r: f"{s.get('latent_frames', 'n/a')} ({s.get('stopped_early', 'n/a')})"),
        ("frames/s end to end (audio + DiT + VAE), whole stream", lambda s, r: _fmt(s.get("frames_per_second"), ".1f")),
        ("time to first frame, warm / cold (first stream of the process)",
         lambda s, r: f"{_fmt(s.get('time_to_first_frame_s'))} / "
                      f"{_fmt(r.get('warmup', {}).get('time_to_first_frame_s'))} s"),
        ("steady block latency p50 / p90 / p99",
         lambda s, r: " / ".join(_fmt(steady(s, q)) for q in ("p50", "p90", "p99")) + " s"),
        ("reset block latency (median)", lambda s, r: _fmt(s.get("latency_s", {}).get("reset_median"), ".3f", " s")),
        ("split of a steady block p50: audio / DiT / VAE",
         lambda s, r: " / ".join(_fmt(stage(s, k)) for k in ("audio_s", "dit_s", "vae_s")) + " s"),
        ("peak GPU memory allocated / reserved",
         lambda s, r: f"{_gb(memory(s, 'peak_allocated'))} / {_gb(memory(s, 'peak_reserved'))}"),
        ("GPU memory growth after the first URCR reset", lambda s, r: growth(s)),
    ]
    lines += [both(row) for row in table]
    checks = result.get("checks", {})
    lines += ["", f"Checks: fused SDPA only: {checks.get('fused_sdpa_only', 'n/a')}; no sync in the block loop: "
                  f"{checks.get('no_sync_in_block_loop', 'n/a')}", "",
              "| training stage (batch 1, bf16-mixed) | step times | peak memory allocated |", "|---|---|---|"]
    for stage, data in result.get("train", {}).get("stages", {}).items():
        if "error" in data or "skipped" in data:
            lines.append(f"| {stage} | {data.get('error', data.get('skipped'))} | |")
            continue
        times = ", ".join(f"{t:.2f}" for t in data.get("step_s", []))
        extra = ""
        if "per_generator_update_at_critic_steps_5_s" in data:
            extra = (f" (generator+critic {data['generator_and_critic_step_s']:.2f}, critic only "
                     f"{data['critic_only_step_s']:.2f}; per generator update at critic_steps 5: "
                     f"{data['per_generator_update_at_critic_steps_5_s']:.1f})")
        lines.append(f"| {stage} | {times} s{extra} | {_gb(data.get('peak_allocated_bytes'))} |")
    for section in ("checks", "graphs", "compiled", "eager", "train"):
        if "error" in result.get(section, {}):
            lines.append(f"\n{section} FAILED: {result[section]['error']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    if args.rows:
        from eval.inputs import read_json_object

        print(rows(read_json_object(existing_file(args.rows, "a bench gpu JSON", "--rows"), "bench gpu")))
        return 0
    if args.plan:
        from bench.gpu_plan import print_plan

        return print_plan(SECTIONS)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dry = args.dry_run
    scale = TINY if dry else FULL
    specs = {name: {**spec, "blocks": args.blocks or spec.get("blocks")} for name, spec in SECTIONS.items()}
    if dry:
        if device == "cpu":
            torch.set_num_threads(1)  # tiny ops: extra threads only spin on a shared CPU
    skip = {s for s in args.skip.split(",") if s}
    out = output_file(args.out, "--out", new_folder_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "gpu", "dry_run": dry, "command": "python -m bench.gpu " + " ".join(argv),
                    "environment": environment(device)}
    write_json_atomic(out, result, default=str)
    seconds = args.stream_seconds
    sections = [
        ("checks", lambda: checks_section(scale, device, dry)),
        ("graphs", lambda: stream_section(scale, device, specs["graphs"], seconds, ("--cuda-graphs",), dry)),
        ("compiled", lambda: stream_section(scale, device, specs["compiled"], seconds,
                                            ("--compile", "--cuda-graphs"), dry)),
        ("eager", lambda: stream_section(scale, device, specs["eager"], seconds, (), dry)),
        ("train", lambda: train_section(scale, device, dry)),
    ]
    if dry and device == "cpu":
        skip.add("compiled")  # inductor's first compile costs minutes on a small CPU; tests trace it with aot_eager
        result["compiled"] = {"skipped": "dry run on a CPU"}
    for name, run in sections:
        if name in skip:
            result.setdefault(name, {"skipped": "--skip"})
            continue
        start = time.perf_counter()
        print(f"[bench.gpu] {name} ...", file=sys.stderr, flush=True)
        try:
            result[name] = run()
        except Exception as err:  # record and go on: one failed section must not cost the others
            result[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:500] if str(err) else ''}",
                            "traceback": traceback.format_exc()[-4000:]}
        result[name]["section_wall_s"] = time.perf_counter() - start
        gc.collect()  # the section's networks, caches and graphs go before the next one builds its own
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        write_json_atomic(out, result, default=str)
        print(f"[bench.gpu] {name} done in {result[name]['section_wall_s']:.1f} s", file=sys.stderr, flush=True)
    print(rows(result))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
