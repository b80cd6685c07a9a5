"""Where sessions' streamers run: worker processes, each holding the weights once for all its sessions.

Why processes: a small model's forward is mostly Python and dispatcher work under the GIL, so threads do
not add up (measured here: two streamers in two threads made 18 frames/s together against 27 for one
alone). Each worker process loads the checkpoint once and runs every session given to it; sessions are spread
over the workers (fewest sessions first), one worker per GPU with `--device cuda`. Fairness: the server
hands a worker at most one block's audio per call and each session has at most one call in flight, so a
worker's first-in-first-out queue takes the sessions in turns, block by block: no session waits for
another's backlog. With `workers=0` the streamers run in one thread of the server's own process (what the
quick tests use: no start-up cost).

The parent sends (request id, op, session, payload) and a reader thread per worker hands each answer
back to the event loop; a worker that dies fails the requests of its sessions, not the server.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lit_avatar.errors import UserError
from lit_avatar.serve.session import encode_image

__all__ = ["EngineSpec", "ProcessWorkers", "ThreadWorkers", "Generated", "worker_devices"]


@dataclass
class EngineSpec:
    """What a worker needs to build the shared generator itself (plain values: it crosses processes).

    Args:
        ckpt: checkpoint path.
        ref_image: uint8 [H, W, 3] reference, already cropped and resized.
        device: "cpu" or "cuda[:N]".
        seed: noise seed of every stream.
        threads: torch intra-op threads in the worker.
        image_format: "jpeg" or "png".
        jpeg_quality: 1..95.
        prompt_cache: the prompt embedding cache folder every worker shares (None: the default).
        decoder: "full" (the checkpoint's VAE) or "tiny" (a TAEHV decoder, `decoder_path`), as `serve --decoder`.
        decoder_path: the tiny decoder's weights.
    """

    ckpt: str
    ref_image: np.ndarray
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    prompt_cache: str | None = None
    decoder: str = "full"
    decoder_path: str | None = None

    def build(self):
        """The AvatarEngine (checkpoint loaded)."""
        import torch

        from lit_avatar.checkpoint import load_generator
        from lit_avatar.inference.decoder_option import with_decoder
        from lit_avatar.serve.engine import AvatarEngine

        torch.set_num_threads(self.threads)
        bundle = load_generator(self.ckpt, device=self.device)
        if bundle.text_encoder is not None:
            bundle.text_encoder.use_cache(self.prompt_cache)
        vae = with_decoder(bundle.vae, self.decoder, self.decoder_path)
        return AvatarEngine(bundle.model, vae, bundle.audio_encoder, bundle.rollout_options, self.ref_image,
                            device=self.device, seed=self.seed, text_encoder=bundle.text_encoder)


@dataclass
class Generated:
    """A streamer call's result: index of its first frame, the encoded frames, and the compute seconds."""

    first: int
    images: list[bytes]
    seconds: float


class _Streams:
    """The streamers of the sessions one worker runs (the weights are the engine's, shared by all)."""

    def __init__(self, engine, image_format: str, jpeg_quality: int) -> None:
        self.engine = engine
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.streamers: dict[str, object] = {}
        self.frames_made: dict[str, int] = {}

    def handle(self, op: str, session: str, payload) -> Generated | int | None:
        """open (payload: the start prompt or None), close, push (audio), finish, or prompt (payload: the text;
        returns the index of the first frame made under it: its streamer applies it at the next block)."""
        if op == "open":
            self.streamers[session] = self.engine.new_streamer(payload)
            self.frames_made[session] = 0
            return None
        if op == "prompt":
            self.streamers[session].set_prompt(self.engine.embed(payload))
            return self.frames_made[session]
        if op == "close":
            self.streamers.pop(session, None)
            self.frames_made.pop(session, None)
            return None
        began = time.perf_counter()
        streamer = self.streamers[session]
        frames = streamer.push_audio(payload) if op == "push" else streamer.flush()
        images = [encode_image(f, self.image_format, self.jpeg_quality) for f in frames]
        first = self.frames_made[session]
        self.frames_made[session] = first + len(frames)
        return Generated(first, images, time.perf_counter() - began)


class ThreadWorkers:
    """Streamers in one thread of this process, over the engine the server already holds.

    Args:
        engine: the AvatarEngine.
        image_format: "jpeg" or "png".
        jpeg_quality: 1..95.
    """

    def __init__(self, engine, image_format: str = "jpeg", jpeg_quality: int = 90) -> None:
        self._streams = _Streams(engine, image_format, jpeg_quality)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="avatar-streams")

    async def call(self, op: str, session: str, payload=None) -> Generated | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._streams.handle, op, session, payload)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _worker_main(conn, spec: EngineSpec) -> None:
    """A worker process: build the engine, then answer requests until the pipe closes."""
    try:
        streams = _Streams(spec.build(), spec.image_format, spec.jpeg_quality)
        conn.send(("ready", None, None))
    except BaseException as err:  # report why, then exit: the parent raises it at start
        conn.send(("failed", None, f"{type(err).__name__}: {err}"))
        return
    while True:
        try:
            request_id, op, session, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", request_id, streams.handle(op, session, payload)))
        except Exception as err:  # one session's failure is answered, the worker goes on
            conn.send(("error", request_id, f"{type(err).__name__}: {err} | {traceback.format_exc(limit=3)}"))


class _Worker:
    def __init__(self, ctx, spec: EngineSpec) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, spec), daemon=True)
        self.process.start()
        child.close()
        self.sessions: set[str] = set()
        self.pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self.lock = threading.Lock()

    def wait_ready(self) -> None:
        status, _, detail = self.conn.recv()
        if status != "ready":
            raise RuntimeError(f"worker process failed to start: {detail}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                status, request_id, result = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                loop, future = self.pending.pop(request_id, (None, None))
            if future is None:
                continue
            if status == "ok":
                loop.call_soon_threadsafe(_resolve, future, result, None)
            else:
                loop.call_soon_threadsafe(_resolve, future, None, RuntimeError(f"generation failed: {result}"))
        with self.lock:  # the worker is gone: fail what waits on it
            waiting, self.pending = list(self.pending.values()), {}
        for loop, future in waiting:
            loop.call_soon_threadsafe(_resolve, future, None, RuntimeError("worker process ended"))


def _resolve(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ProcessWorkers:
    """One worker process per spec (each may name its own device), sessions spread over them.

    Args:
        specs: how each worker builds the engine; about one per CPU core for small models, one per GPU.
    """

    def __init__(self, specs: list[EngineSpec]) -> None:
        # forkserver: workers fork from a clean process that has imported torch once (fast to start, and
        # safe: never a fork of this process with its threads)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["lit_avatar.serve.workers"])
        self._workers = [_Worker(ctx, spec) for spec in specs]
        try:
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.shutdown()
            raise
        self._ids = iter(range(1 << 62))
        self._home: dict[str, _Worker] = {}

    def _route(self, op: str, session: str) -> _Worker | None:
        """The session's worker; `open` picks the least busy live one, `close` forgets the session."""
        if op == "open":
            alive = [w for w in self._workers if w.process.is_alive()]
            if not alive:
                raise RuntimeError("every worker process has ended")
            worker = self._home[session] = min(alive, key=lambda w: len(w.sessions))
            worker.sessions.add(session)
            return worker
        if op == "close":
            worker = self._home.pop(session, None)  # a session whose open failed has none
            if worker is not None:
                worker.sessions.discard(session)
            return worker
        return self._home[session]

    async def call(self, op: str, session: str, payload=None) -> Generated | None:
        worker = self._route(op, session)
        if worker is None:
            return None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        request_id = next(self._ids)
        with worker.lock:
            worker.pending[request_id] = (loop, future)
        try:
            worker.conn.send((request_id, op, session, payload))
        except (OSError, ValueError) as err:
            with worker.lock:
                worker.pending.pop(request_id, None)
            if op == "open":  # never opened there: no entry may outlive the failed send
                self._route("close", session)
            raise RuntimeError(f"worker process unreachable ({err})") from None
        return await future

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.conn.close()
        for worker in self._workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()


def worker_devices(device: str, workers: int | None, max_sessions: int, cpu_count: int, gpu_count: int) -> list[str]:
    """The device of each worker process ([] runs the streamers in a thread of the server instead).

    Args:
        device: --device: "cpu", "cuda" (every GPU: one worker each) or "cuda:N" (that GPU).
        workers: --workers, or None for the default: one per GPU with "cuda", else the CPU count; never
            more than max_sessions.
        max_sessions: --max-sessions.
        cpu_count: CPUs of this machine.
        gpu_count: GPUs of this machine (injected: tested without any).
    """
    if device == "cuda":
        if gpu_count < 1:
            raise UserError("--device cuda: no GPU found (use --device cpu)")
        count = workers if workers is not None else min(gpu_count, max_sessions)
        return [f"cuda:{i % gpu_count}" for i in range(count)]
    count = workers if workers is not None else min(max(cpu_count, 1), max_sessions)
    if device.startswith("cuda"):
        count = workers if workers is not None else 1  # one GPU: one worker holds it
    return [device] * count
