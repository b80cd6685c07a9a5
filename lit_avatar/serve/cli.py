"""`lit-avatar serve`: talk to a trained checkpoint live, from a browser's microphone.

    lit-avatar serve --ckpt student.ckpt --ref face.png          # then open http://127.0.0.1:8080/
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable

from lit_avatar.command import CommandParser, Namespace
from lit_avatar.errors import UserError, existing_file
from lit_avatar.inference.decoder_option import add_decoder_arguments, check_decoder_arguments, with_decoder

TOKEN_ENV = "LIT_AVATAR_SERVE_TOKEN"


def build_parser() -> CommandParser:
    p = CommandParser(
        prog="lit-avatar serve",
        description="Serve a live avatar: a page at http://HOST:PORT/ sends microphone (or audio file) audio "
                    "over a WebSocket and shows the frames the checkpoint streams back.")
    p.add_argument("--ckpt", required=True, help="causal (ode_init or student) checkpoint, or a folder written by "
                   "lit-avatar export")
    p.add_argument("--ref", required=True, help="reference image (PNG/JPEG/...), cropped and resized to the "
                   "model's size")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port, printed at start)")
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent sessions; more are refused with a message")
    p.add_argument("--token", default=None, help=f"access token the page and clients must give as ?token=... "
                   f"(or set {TOKEN_ENV}, which keeps it out of the process list)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="end a session after this many seconds "
                   "without audio (counted once its audio has become frames)")
    p.add_argument("--max-message-kib", type=float, default=64.0, help="largest message a peer may send (KiB)")
    p.add_argument("--max-backlog", type=float, default=1.0, help="seconds of audio a session may have waiting; "
                   "beyond it the oldest is dropped so the video catches up with the speaker")
    p.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg", help="frames sent as jpeg or png "
                   "(lossless)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality, 1..95")
    p.add_argument("--size", default=None, help="video HxW, e.g. 64x64 (default: the checkpoint's training size)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of every session")
    p.add_argument("--device", default="cpu", help="cpu, cuda (one worker process per GPU) or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 suits small models: sessions "
                   "run in parallel instead)")
    p.add_argument("--workers", type=int, default=None, help="worker processes that run the sessions' streamers, "
                   "each loading the weights once (default: the CPU count, or the GPU count with --device cuda, at "
                   "most --max-sessions; 0 runs them in a thread of the server's process)")
    add_decoder_arguments(p)
    p.add_argument("--prompt-cache", default=None, help="folder of cached prompt embeddings, shared by the workers "
                   "(default: $LIT_AVATAR_PROMPT_CACHE or ~/.cache/lit_avatar/prompts); used when the checkpoint "
                   "was trained with captions (the page's prompt box)")
    return p


def build_server(args: Namespace, observer=None, gpu_count: Callable[[], int] | None = None):
    """The AvatarServer the flags describe (checkpoint loaded, reference read); UserError on bad input.

    Args:
        gpu_count: how many GPUs `--device cuda` spreads its workers over (default: torch's count).
    """
    import torch

    from lit_avatar.checkpoint import build_generator, checkpoint_path, read_generator, require_causal
    from lit_avatar.command import device_option, size_option
    from lit_avatar.inference.generate_cli import read_reference
    from lit_avatar.serve.app import AvatarServer
    from lit_avatar.serve.engine import AvatarEngine
    from lit_avatar.serve.options import ServeOptions
    from lit_avatar.serve.workers import EngineSpec, ProcessWorkers, worker_devices

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0..65535")
    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: expected >= 1")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers {args.workers}: expected >= 0")
    checkpoint_path(args.ckpt, "a causal (ode_init or student) checkpoint")
    existing_file(args.ref, "a reference image (PNG/JPEG/...)", "--ref")
    check_decoder_arguments(args.decoder, args.decoder_path)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    options = ServeOptions(max_sessions=args.max_sessions, token=token, idle_timeout_s=args.idle_timeout,
                           max_message_bytes=int(args.max_message_kib * 1024), max_backlog_s=args.max_backlog,
                           image_format=args.image_format, jpeg_quality=args.jpeg_quality, seed=args.seed)
    device = device_option(args.device)
    source = read_generator(args.ckpt)  # the record is checked (allow-list, kind) before anything is built
    require_causal(source, "serve")
    torch.set_num_threads(args.threads)
    bundle = build_generator(source, device=device)
    if bundle.text_encoder is not None:
        bundle.text_encoder.use_cache(args.prompt_cache)
    vae = with_decoder(bundle.vae, args.decoder, args.decoder_path)
    cell = bundle.vae.spatial_factor * bundle.model.config.patch_size[1]
    ref = read_reference(args.ref, size_option(args.size, cell) if args.size else bundle.video_size, cell)
    engine = AvatarEngine(bundle.model, vae, bundle.audio_encoder, bundle.rollout_options, ref,
                          device=device, seed=args.seed, text_encoder=bundle.text_encoder)
    engine.new_streamer()  # fail now, not at the first peer, if the reference does not fit the model
    gpus = gpu_count() if gpu_count is not None else torch.cuda.device_count()
    devices = worker_devices(args.device, args.workers, options.max_sessions, os.cpu_count() or 1, gpus)
    workers = None
    if devices:
        workers = ProcessWorkers([EngineSpec(str(args.ckpt), ref, where, args.seed, args.threads, options.image_format,
                                             options.jpeg_quality, args.prompt_cache, args.decoder, args.decoder_path)
                                  for where in devices])
    return AvatarServer(engine, options, workers=workers, observer=observer)


async def _serve(server, host: str, port: int) -> None:
    try:
        runner, bound = await server.start(host, port)
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen ({err.strerror or err})") from None
    shown = f"[{host}]" if ":" in host else host
    query = "?token=..." if server.options.token else ""
    print(f"serving http://{shown}:{bound}/{query} ({server.engine.height}x{server.engine.width}, "
          f"at most {server.options.max_sessions} sessions); Ctrl-C stops", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not server.options.token:
        print(f"warning: listening on {host} without --token: anyone who can reach it can use it", file=sys.stderr)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    """Run `lit-avatar serve` (see --help)."""
    args = build_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    server = build_server(args)
    asyncio.run(_serve(server, args.host, args.port))
    return 0
