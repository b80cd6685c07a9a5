"""Where sessions' streamers run: worker processes, each holding the weights once for all its sessions.

Why processes: a small model's forward is mostly Python and dispatcher work under the GIL, so threads do
not add up (measured here: two streamers in two threads made 18 frames/s together against 27 for one
alone). Each worker process loads the checkpoint once and runs every session given to it, one block
call at a time; sessions are spread over the workers (fewest sessions first). With `workers=0` the
streamers run in one thread of the server's own process (what the quick tests use: no start-up cost).

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

from lit_avatar.serve.session import encode_image

__all__ = ["EngineSpec", "ProcessWorkers", "ThreadWorkers", "Generated"]


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
    """

    ckpt: str
    ref_image: np.ndarray
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    image_format: str = "jpeg"
    jpeg_quality: int = 90

    def build(self):
        """The AvatarEngine (checkpoint loaded)."""
        import torch

        from lit_avatar.checkpoint import load_generator
        from lit_avatar.serve.engine import AvatarEngine

        torch.set_num_threads(self.threads)
        bundle = load_generator(self.ckpt, device=self.device)
        return AvatarEngine(bundle.model, bundle.vae, bundle.audio_encoder, bundle.rollout_options, self.ref_image,
                            device=self.device, seed=self.seed)


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

    def handle(self, op: str, session: str, payload) -> Generated | None:
        if op == "open":
            self.streamers[session] = self.engine.new_streamer()
            self.frames_made[session] = 0
            return None
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
    """`count` worker processes, sessions spread over them.

    Args:
        spec: how each worker builds the engine.
        count: processes; about the number of CPU cores for small models, 1 per GPU.
    """

    def __init__(self, spec: EngineSpec, count: int) -> None:
        # forkserver: workers fork from a clean process that has imported torch once (fast to start, and
        # safe: never a fork of this process with its threads)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["lit_avatar.serve.workers"])
        self._workers = [_Worker(ctx, spec) for _ in range(count)]
        try:
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.shutdown()
            raise
        self._ids = iter(range(1 << 62))
        self._home: dict[str, _Worker] = {}

    async def call(self, op: str, session: str, payload=None) -> Generated | None:
        if op == "open":
            alive = [w for w in self._workers if w.process.is_alive()]
            if not alive:
                raise RuntimeError("every worker process has ended")
            self._home[session] = min(alive, key=lambda w: len(w.sessions))
            self._home[session].sessions.add(session)
        worker = self._home[session]
        if op == "close":
            worker.sessions.discard(session)
            del self._home[session]
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
            raise RuntimeError(f"worker process unreachable ({err})") from None
        return await future

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.conn.close()
        for worker in self._workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
