"""`lit-avatar generate`: stream a talking-head video from an audio file and a reference image.

The audio is fed to the AvatarStreamer in small chunks, as a live source would deliver it, so the
printed time to first frame and frames/s are those of streaming, not of an offline batch. Frames are
H.264-encoded as they come out (included in frames/s; memory stays bounded for any length) and the AAC
audio is muxed at the end. The mp4 and its JSON sidecar (fps, duration, per-block latency, mouth box when
given) are written atomically: an error never leaves a partial file behind.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lit_avatar.command import CommandParser, device_option, int_list, size_option
from lit_avatar.errors import UserError, existing_file, output_file
from lit_avatar.inference.decoder_option import add_decoder_arguments, check_decoder_arguments, with_decoder
from lit_avatar.inference.prompt_option import add_prompt_arguments, check_prompt_arguments, embed_prompts

FPS = 25
SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.2  # how much audio a live source delivers at a time


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar generate",
        description="Stream a video from audio + a reference image with a causal (ode_init/student) checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint with a lit_avatar generator record, or a folder "
                        "written by lit-avatar export")
    parser.add_argument("--audio", required=True, help="speech audio, any common format/rate/channels")
    parser.add_argument("--ref", required=True, help="reference image (PNG/JPEG/...); cropped and resized to the "
                        "model's training size")
    parser.add_argument("--out", required=True, help="output video (.mp4); OUT.json gets the sidecar")
    parser.add_argument("--seconds", type=float, default=None, help="use only the first N seconds of audio")
    parser.add_argument("--psb-steps", default=None, help="denoising steps per block index, e.g. 8,6,4 "
                        "(default: the checkpoint's)")
    parser.add_argument("--no-mci", action="store_true", help="write the context clean (Motion Condition Injection "
                        "off)")
    parser.add_argument("--no-urcr", action="store_true", help="no cache reset: RoPE positions grow (baseline)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed; the same seed and inputs give the same video")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="auto", help="weights' dtype: auto (bfloat16 on CUDA, float32 on CPU), "
                        "float32, bfloat16 or float16; TF32 is on for what stays float32 on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (first blocks pay "
                        "the compilation; worth it for long streams on a GPU)")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the steady-state denoising forwards "
                        "from CUDA graphs (fixed block shapes; CUDA only)")
    parser.add_argument("--size", default=None, help="output HxW, e.g. 64x64 (default: the checkpoint's training size)")
    parser.add_argument("--mouth-box", default=None, help="x0,y0,x1,y1 in [0,1] of the mouth in the reference, "
                        "copied to the sidecar for lip-sync evaluation")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_decoder_arguments(parser)
    add_prompt_arguments(parser)
    return parser


def _mouth_box(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not all(0.0 <= v <= 1.0 for v in box) or box[0] >= box[2] or box[1] >= box[3]:
        raise UserError(f"--mouth-box {text!r}: expected x0,y0,x1,y1 in [0, 1] with x0 < x1 and y0 < y1")
    return box


def read_reference(path: str, size: tuple[int, int] | None, cell: int) -> np.ndarray:
    """The reference image as uint8 [H, W, 3]: centre-cropped to the target aspect, then resized.

    Args:
        path: image file.
        size: (H, W) to produce; None keeps the image's size rounded down to a multiple of `cell`.
        cell: pixels per token side (VAE spatial factor * patch size); sizes must be multiples of it.
    """
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise UserError(f"{path}: reference image not found")
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read as an image ({type(err).__name__}); expected PNG/JPEG/...") from None
    if size is None:
        size = (image.height // cell * cell, image.width // cell * cell)
    height, width = size
    if height < cell or width < cell or height % cell or width % cell:
        raise UserError(f"{path}: output size {height}x{width} must be positive multiples of {cell}")
    scale = max(height / image.height, width / image.width)
    crop_w, crop_h = width / scale, height / scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    image = image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    return np.asarray(image, dtype=np.uint8)


def latency_summary(records: list[dict], first_frame_seconds: float | None, wall_seconds: float,
                    frames: int, audio_seconds: float) -> dict:
    """Numbers the sidecar and the console report: first block, steady state, reset blocks, speed."""
    seconds = [r["seconds"] for r in records]
    steady = [r["seconds"] for r in records[1:] if not r["reset"]] or seconds
    resets = [r["seconds"] for r in records if r["reset"]]
    return {
        "blocks": len(records),
        "first_block_s": seconds[0] if seconds else None,
        "median_block_s": statistics.median(steady) if steady else None,
        "p90_block_s": float(np.percentile(steady, 90)) if steady else None,
        "max_block_s": max(seconds) if seconds else None,
        "reset_block_median_s": statistics.median(resets) if resets else None,
        "reset_blocks": len(resets),
        "reset_block_indices": [r["block"] for r in records if r["reset"]],  # where URCR re-indexed the cache
        "block_frames": [r["frames"] for r in records],  # video frames per block: the causal grid's spans
        "time_to_first_frame_s": first_frame_seconds,
        "wall_s": wall_seconds,
        "frames_per_second": frames / wall_seconds if wall_seconds > 0 else None,
        "real_time_factor": wall_seconds / audio_seconds if audio_seconds > 0 else None,
    }


def main(argv: list[str]) -> int:
    """Run `lit-avatar generate` (see --help)."""
    args = build_parser().parse(argv)
    out = output_file(args.out, "--out", suffixes=(".mp4", ".mkv", ".mov"))
    from lit_avatar.checkpoint import checkpoint_path, read_generator, require_causal

    checkpoint_path(args.ckpt, "a checkpoint of a causal (ode_init or student) generator")
    existing_file(args.audio, "an audio or video file with speech", "--audio")
    existing_file(args.ref, "a reference image (PNG/JPEG/...)", "--ref")
    check_decoder_arguments(args.decoder, args.decoder_path)
    device = device_option(args.device)
    from lit_avatar.inference.fast_path import resolve_dtype

    dtype = resolve_dtype(args.dtype, device)
    psb_steps = int_list(args.psb_steps, "--psb-steps") if args.psb_steps else None
    mouth_box = _mouth_box(args.mouth_box)
    if args.seconds is not None and args.seconds <= 0:
        raise UserError(f"--seconds {args.seconds}: expected a positive duration")
    if args.cuda_graphs and device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device (got --device {args.device})")
    source = read_generator(args.ckpt)  # the record is checked (allow-list, kind) before anything is built
    require_causal(source, "generate")
    check_prompt_arguments(args, source.record, str(args.ckpt), args.cuda_graphs)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lit_avatar.data.atomic import write_json_atomic
    from lit_avatar.data.media import VideoWriter, read_audio
    from lit_avatar.inference.streamer import AvatarStreamer

    audio = read_audio(args.audio, SAMPLE_RATE)
    if args.seconds is not None:
        audio = audio[: int(round(args.seconds * SAMPLE_RATE))]
    bundle, model, vae, fast = _build(source, device, dtype, args.compile, args.cuda_graphs, args.decoder,
                                      args.decoder_path)
    options = _rollout_options(bundle.rollout_options, psb_steps, args.no_mci, args.no_urcr)
    cell = bundle.vae.spatial_factor * bundle.model.config.patch_size[1]
    size = size_option(args.size, cell) if args.size else bundle.video_size
    ref = read_reference(args.ref, size, cell)
    text, negative = embed_prompts(args, bundle.text_encoder, bundle.model.config.text_dim, str(args.ckpt), device)
    streamer = AvatarStreamer(model, vae, bundle.audio_encoder, options, ref, text=text, seed=args.seed,
                              device=device, text_guidance=args.text_guidance, negative_text=negative)
    if len(audio) < streamer.samples_per_first_block:
        raise UserError(f"{args.audio}: {len(audio) / SAMPLE_RATE:.3f} s of audio is shorter than one block "
                        f"({streamer.samples_per_first_block / SAMPLE_RATE:.3f} s)")
    total_frames = streamer.grid.frames_for_samples(len(audio))
    # frames are encoded as they stream out: memory stays bounded however long the audio is
    with VideoWriter(out, fps=FPS, audio=audio, sample_rate=SAMPLE_RATE) as writer:
        wall = _stream(streamer, audio, total_frames, writer, progress=not args.no_progress)
    num_frames = writer.frames_written
    audio_seconds = len(audio) / SAMPLE_RATE
    summary = latency_summary(list(streamer.latency), streamer.first_frame_seconds, wall, num_frames, audio_seconds)
    sidecar = {
        "video": out.name, "fps": FPS, "seconds": num_frames / FPS, "audio_seconds": audio_seconds,
        "frames": num_frames, "height": int(ref.shape[0]), "width": int(ref.shape[1]), "mouth_box": mouth_box,
        "checkpoint": str(args.ckpt), "kind": bundle.kind, "seed": args.seed, "device": str(device),
        "dtype": str(dtype).removeprefix("torch."), "compile": bool(args.compile),
        "cuda_graphs": bool(args.cuda_graphs), "decoder": args.decoder, **fast, **_prompt_fields(args),
        "rollout": dataclasses.asdict(options), "latency": summary, "grid": streamer.grid_fields(),
    }
    try:
        write_json_atomic(out.with_suffix(".json"), sidecar)
    except BaseException:
        out.unlink(missing_ok=True)  # the pair is one output: never leave the video without its sidecar
        raise
    print(f"wrote {out} ({num_frames} frames, {num_frames / FPS:.2f} s) and {out.with_suffix('.json').name}")
    print(f"time to first frame {summary['time_to_first_frame_s']:.3f} s, {summary['frames_per_second']:.1f} frames/s, "
          f"real-time factor {summary['real_time_factor']:.3f} (processing time / audio duration; < 1 is faster "
          "than real time)")
    return 0


def _prompt_fields(args) -> dict:
    """The sidecar's record of what the stream was told in words (None: not given)."""
    return {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "text_guidance": args.text_guidance}


def _rollout_options(options, psb_steps: list[int] | None, no_mci: bool, no_urcr: bool):
    """The checkpoint's rollout options with the command line's overrides."""
    if psb_steps is not None:
        options = dataclasses.replace(options, psb=dataclasses.replace(options.psb, steps=psb_steps))
    if no_mci:
        options = dataclasses.replace(options, mci=dataclasses.replace(options.mci, enabled=False))
    if no_urcr:
        options = dataclasses.replace(options, urcr=dataclasses.replace(options.urcr, enabled=False))
    return options


def _build(source, device: torch.device, dtype: torch.dtype, compile_blocks_: bool, cuda_graphs: bool,
           decoder: str, decoder_path: str | None):
    """(bundle, the model to stream with, the VAE to decode with, the device settings for the sidecar): networks
    built on `device`, the decoder swapped if asked, cast to `dtype`, the DiT compiled and/or wrapped for CUDA
    graph replay."""
    from lit_avatar.checkpoint import build_generator
    from lit_avatar.inference.fast_path import cast_for_inference, compile_blocks, configure_device

    bundle = build_generator(source, device=device)
    vae = with_decoder(bundle.vae, decoder, decoder_path)
    fast = configure_device(device)
    cast_for_inference(dtype, bundle.model, vae, bundle.audio_encoder)
    if compile_blocks_:
        compile_blocks(bundle.model)
    model = bundle.model
    if cuda_graphs:
        from lit_avatar.inference.cuda_graphs import CUDAGraphDiT

        model = CUDAGraphDiT(bundle.model)
    return bundle, model, vae, fast


def _stream(streamer, audio: np.ndarray, total_frames: int, writer, progress: bool) -> float:
    """Feed the audio in live-sized chunks, hand every frame the streamer returns to the writer, and return
    the generation wall time (from the first push to the last frame, encoding included)."""
    from lit_avatar.quiet import progress_bar

    chunk = int(CHUNK_SECONDS * SAMPLE_RATE)
    with progress_bar(total=total_frames, unit="frame", enabled=progress, desc="generate") as bar:
        for start in range(0, len(audio), chunk):
            frames = streamer.push_audio(audio[start:start + chunk])
            writer.write(frames)
            bar.update(len(frames))
        frames = streamer.flush()
        writer.write(frames)
        bar.update(len(frames))
    return time.perf_counter() - streamer.first_push_time
