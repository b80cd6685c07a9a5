"""Where sessions run: turns per block within a worker, one worker per GPU, and no bookkeeping left behind when
an open is cancelled or a send to a worker fails."""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from serve_helpers import image_file, noise_audio, run_peer, tiny_checkpoint

from lit_avatar.errors import UserError
from lit_avatar.serve.cli import build_parser, build_server
from lit_avatar.serve.session import LiveSession
from lit_avatar.serve.workers import ProcessWorkers, worker_devices

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_workers")
    args = build_parser().parse_args(["--ckpt", tiny_checkpoint(folder / "s.ckpt"), "--ref",
                                      image_file(folder / "ref.png"), "--port", "0", "--workers", "0",
                                      "--max-backlog", "60"])
    return build_server(args)


class _Logged:
    """Workers that log each call (op, session, samples) before passing it on."""

    def __init__(self, inner) -> None:
        self.inner, self.log = inner, []

    async def call(self, op, session, payload=None):
        self.log.append((op, session, 0 if payload is None else len(payload)))
        return await self.inner.call(op, session, payload)

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_sessions_take_turns_block_by_block(server):
    """Two sessions with all their audio waiting (1.0 s and 0.4 s): each worker call carries at most one
    block's audio, and the worker alternates between them, so the short session never waits for the long
    one's backlog; the long one goes on alone once the short one is done."""
    from lit_avatar.serve.app import _Outbox

    logged = _Logged(server.workers)
    server.workers = logged
    try:
        sessions = {"long": LiveSession(server.options, "long"), "short": LiveSession(server.options, "short")}
        sessions["long"].receive_audio(noise_audio(1.0, seed=1))
        sessions["short"].receive_audio(noise_audio(0.4, seed=2))

        async def run():
            pumps = []
            for name, session in sessions.items():
                await logged.call("open", name)
                wake, stopping = asyncio.Event(), asyncio.Event()
                wake.set()
                stopping.set()
                pumps.append(server._pump(session, _Outbox(1000), wake, stopping))
            await asyncio.gather(*pumps)
            for name in sessions:
                await logged.call("close", name)

        asyncio.run(run())
    finally:
        server.workers = logged.inner
    block = server.engine.block_samples
    pushes = [(session, n) for op, session, n in logged.log if op == "push"]
    assert block == 2 * 640 and all(n <= block for _, n in pushes)
    order = [session for session, _ in pushes]
    short_pushes = order.count("short")
    assert short_pushes == -(-6400 // block)
    assert order[:2 * short_pushes] == ["long", "short"] * short_pushes  # turns while both have audio
    assert set(order[2 * short_pushes:]) == {"long"}
    assert sessions["short"].frames_made == 10 and sessions["long"].frames_made == 25


def test_worker_devices_one_per_gpu():
    """--device cuda places one worker per GPU (the count injected: no GPU needed here)."""
    assert worker_devices("cuda", None, 4, cpu_count=2, gpu_count=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert worker_devices("cuda", None, 2, cpu_count=2, gpu_count=3) == ["cuda:0", "cuda:1"]  # <= max sessions
    assert worker_devices("cuda", 4, 4, cpu_count=2, gpu_count=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices("cuda:1", None, 4, cpu_count=8, gpu_count=2) == ["cuda:1"]
    assert worker_devices("cpu", None, 4, cpu_count=2, gpu_count=0) == ["cpu", "cpu"]
    assert worker_devices("cpu", 0, 4, cpu_count=2, gpu_count=0) == []
    with pytest.raises(UserError, match="--device cuda: no GPU found"):
        worker_devices("cuda", None, 4, cpu_count=2, gpu_count=0)


class _DeadPipe:
    def send(self, message) -> None:
        raise BrokenPipeError("the worker's pipe is closed")


def _router(worker) -> ProcessWorkers:
    """ProcessWorkers over a stand-in worker (its routing and bookkeeping, no process started)."""
    workers = ProcessWorkers.__new__(ProcessWorkers)
    workers._workers, workers._ids, workers._home = [worker], iter(range(1 << 20)), {}
    return workers


def test_failed_send_leaves_no_session_registered():
    worker = SimpleNamespace(conn=_DeadPipe(), sessions=set(), pending={}, lock=threading.Lock(),
                             process=SimpleNamespace(is_alive=lambda: True))
    workers = _router(worker)
    with pytest.raises(RuntimeError, match="worker process unreachable"):
        asyncio.run(workers.call("open", "s1"))
    assert workers._home == {} and worker.sessions == set() and worker.pending == {}
    assert asyncio.run(workers.call("close", "s1")) is None  # closing what never opened is a no-op


class _CancelAfterOpen(_Logged):
    """The open reaches the worker, then the session's task is cancelled (a peer or shutdown at that moment)."""

    async def call(self, op, session, payload=None):
        result = await super().call(op, session, payload)
        if op == "open":
            raise asyncio.CancelledError
        return result


def test_cancelled_open_still_closes_the_streamer(server):
    inner = server.workers
    server.workers = _CancelAfterOpen(inner)

    async def body():
        runner, port = await server.start("127.0.0.1", 0)
        try:
            result = await run_peer(f"ws://127.0.0.1:{port}/ws", noise_audio(0.2))
            await asyncio.wait_for(server.wait_quiet(), 60)
            return result
        finally:
            await runner.cleanup()

    try:
        result = asyncio.run(body())
    finally:
        logged, server.workers = server.workers, inner
    opened = [s for op, s, _ in logged.log if op == "open"]
    assert len(opened) == 1 and ("close", opened[0], 0) in logged.log
    assert inner._streams.streamers == {} and not server.sessions and not result.frames
    assert server.finished[-1]["end_reason"] == "peer gone"
    assert np.isfinite(server.finished[-1]["seconds"])
