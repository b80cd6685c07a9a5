"""The live server: one static page, a WebSocket per session, figures at /stats.

Protocol on /ws (all sizes bounded by ServeOptions):
  peer -> server  text   {"type": "start"}            once, first; the server answers {"type": "ready", ...}
                         (optional "prompt": TEXT, the prompt from the first frame on; "ready" says whether the
                         model takes prompts: "prompts": true/false, and "max_prompt_chars")
                  binary 16-bit little-endian mono PCM at 16 kHz (any count of samples per message)
                  text   {"type": "prompt", "text": TEXT}  any time after start: a new prompt from the next block
                         on (no reset, the motion goes on); the latest one wins if several arrive during a block;
                         answered by {"type": "prompt_applied", "text": TEXT, "frame": N}, N = its first frame
                  text   {"type": "stop"}             end of audio: the rest is generated, then {"type": "end"}
  server -> peer  binary 8-byte header (uint32 frame index, int32 peer sample its audio ended at, -1 past
                         the audio; little-endian) + a JPEG/PNG image
                  text   {"type": "stats", ...} every second; {"type": "error", "message": ...} before a close
A bad message (not JSON, unknown type, audio before start, odd byte count, over the size limit, a prompt that
is not a string of at most max_prompt_chars characters, or any prompt to a model trained without text) is
answered with an error message naming it and the session is closed (1003); other sessions are not touched.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import struct
import uuid
from collections import deque
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from lit_avatar.inference.prompt_option import MAX_PROMPT_CHARS
from lit_avatar.serve.engine import AvatarEngine
from lit_avatar.serve.options import FPS, SAMPLE_RATE, ServeOptions
from lit_avatar.serve.session import LiveSession, SentFrame
from lit_avatar.serve.workers import Generated, ThreadWorkers

__all__ = ["AvatarServer", "SessionObserver", "FRAME_HEADER"]

STATIC = Path(__file__).resolve().parent / "static"
FRAME_HEADER = struct.Struct("<Ii")
# Messages over this multiple of the limit are cut off by the WebSocket layer itself (close 1009, no text)
# before they are read into memory; those between 1x and this get a message naming the sizes.
TRANSPORT_SLACK = 4
log = logging.getLogger("lit_avatar.serve")


class SessionObserver(Protocol):
    """Sees what a session generated (tests and recorders); called on the event loop."""

    def audio(self, session: str, samples: np.ndarray) -> None: ...
    def frames(self, session: str, frames: list[SentFrame]) -> None: ...


class _Refused(Exception):
    """Ends a session with a message to the peer and a close code."""

    def __init__(self, code: int, message: str, kind: str = "protocol") -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


class _Outbox:
    """What the sender writes: frames (bounded, oldest dropped for a slow reader) and JSON messages."""

    def __init__(self, max_frames: int) -> None:
        self.frames: deque[SentFrame] = deque()
        self.messages: deque[dict] = deque(maxlen=16)
        self.max_frames = max_frames
        self.ready = asyncio.Event()
        self.closed = False

    def put_frames(self, frames: list[SentFrame]) -> int:
        self.frames.extend(frames)
        dropped = 0
        while len(self.frames) > self.max_frames:
            self.frames.popleft()
            dropped += 1
        self.ready.set()
        return dropped

    def put_message(self, message: dict) -> None:
        self.messages.append(message)
        self.ready.set()

    def empty(self) -> bool:
        return not self.frames and not self.messages


class AvatarServer:
    """Sessions over one AvatarEngine.

    Args:
        engine: the generator (its size is the video's; with in-process workers it also generates).
        options: limits and policies.
        workers: where the sessions' streamers run (workers.py); default: one thread of this process.
        observer: optional; sees each session's audio and sent frames.
    """

    def __init__(self, engine: AvatarEngine, options: ServeOptions, workers=None,
                 observer: SessionObserver | None = None) -> None:
        self.engine = engine
        self.options = options
        self.observer = observer
        self.workers = workers or ThreadWorkers(engine, options.image_format, options.jpeg_quality)
        self.sessions: dict[str, LiveSession] = {}
        self.finished: deque[dict] = deque(maxlen=100)
        self.refused: dict[str, int] = {}
        self._slots_taken = 0
        self._quiet = asyncio.Event()  # set while no session holds a slot
        self._quiet.set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._page = (STATIC / "index.html").read_bytes()

    # -- HTTP ------------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        # Only these routes exist: no directory is served, so no path can reach a file outside static/.
        app = web.Application(client_max_size=self.options.max_message_bytes)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/stats", self._stats)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline' blob:; style-src "
            "'unsafe-inline'; img-src blob: data:; media-src blob:; connect-src 'self'"})

    def _token_ok(self, request: web.Request) -> bool:
        if self.options.token is None:
            return True
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.options.token.encode())

    async def _stats(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return web.json_response({"error": "access token missing or wrong (?token=...)"}, status=401)
        return web.json_response({
            "max_sessions": self.options.max_sessions, "sessions": [s.stats() for s in self.sessions.values()],
            "finished": list(self.finished), "refused": dict(self.refused),
            "fps": FPS, "height": self.engine.height, "width": self.engine.width,
            "prompts": self.engine.text_encoder is not None})

    async def _on_shutdown(self, app: web.Application) -> None:
        for ws in list(self._sockets):  # end open sessions, so their handlers return
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def _on_cleanup(self, app: web.Application) -> None:
        self.workers.shutdown()

    # -- WebSocket -------------------------------------------------------------------------------
    def _origin_ok(self, request: web.Request) -> bool:
        """Browsers send Origin; another site's page must not drive this server (cross-site WebSocket)."""
        origin = request.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc == request.host

    async def _refuse(self, ws: web.WebSocketResponse, code: int, message: str, kind: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        log.info("refused (%s): %s", kind, message)
        if not ws.closed:
            try:
                await ws.send_json({"type": "error", "message": message})
                await ws.close(code=code, message=message.encode()[:120])
            except (ConnectionError, RuntimeError) as err:  # the peer is already gone; the refusal is counted above
                log.debug("refusal not delivered (%s): %s", kind, err)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=TRANSPORT_SLACK * self.options.max_message_bytes,
                                   heartbeat=self.options.heartbeat_s, compress=False)
        await ws.prepare(request)
        if not self._origin_ok(request):
            await self._refuse(ws, WSCloseCode.POLICY_VIOLATION,
                               f"origin {request.headers.get('Origin')} is not this server's page", "origin")
            return ws
        if not self._token_ok(request):
            await self._refuse(ws, WSCloseCode.POLICY_VIOLATION, "access token missing or wrong (?token=...)", "token")
            return ws
        if self._slots_taken >= self.options.max_sessions:
            await self._refuse(ws, WSCloseCode.TRY_AGAIN_LATER,
                               f"server busy: all {self.options.max_sessions} sessions in use; try again later", "busy")
            return ws
        self._slots_taken += 1
        self._quiet.clear()
        self._sockets.add(ws)
        try:
            await self._run_session(ws)
        except _Refused as err:
            await self._refuse(ws, err.code, str(err), err.kind)
        except ConnectionError:
            pass  # the peer vanished; the session cleaned up after itself
        finally:
            self._slots_taken -= 1
            if not self._slots_taken:
                self._quiet.set()
            self._sockets.discard(ws)
        return ws

    async def wait_quiet(self) -> None:
        """Return once no session holds a slot (every handler has finished its cleanup)."""
        await self._quiet.wait()

    async def _receive(self, ws: web.WebSocketResponse, what: str, busy=lambda: False):
        """The next message; a close, an error or the idle timeout ends the session. The idle clock runs
        only while `busy()` is false: a session is not idle while its audio is still being turned into frames."""
        while True:
            try:
                msg = await ws.receive(timeout=self.options.idle_timeout_s)
                break
            except asyncio.TimeoutError:
                if not busy():
                    raise _Refused(WSCloseCode.OK, f"idle: no {what} for {self.options.idle_timeout_s:g} s; "
                                   "session ended", "idle") from None
        if msg.type == WSMsgType.ERROR:
            raise _Refused(WSCloseCode.MESSAGE_TOO_BIG, f"connection error ({msg.data})", "transport")
        return msg

    def _check_size(self, data: bytes | str) -> None:
        size = len(data)
        if size > self.options.max_message_bytes:
            raise _Refused(WSCloseCode.MESSAGE_TOO_BIG, f"message of {size} bytes exceeds the limit of "
                           f"{self.options.max_message_bytes} bytes", "oversize")

    def _control(self, text: str) -> dict:
        """A control message, its type checked (start, prompt or stop)."""
        self._check_size(text)
        try:
            message = json.loads(text)
        except ValueError:
            raise _Refused(WSCloseCode.UNSUPPORTED_DATA, "text message is not JSON: expected "
                           '{"type": "start"}, {"type": "prompt", "text": ...} or {"type": "stop"}') from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in ("start", "prompt", "stop"):
            raise _Refused(WSCloseCode.UNSUPPORTED_DATA, f"unknown message type {str(kind)[:40]!r}: expected "
                           "'start', 'prompt' or 'stop'")
        return message

    def _prompt(self, message: dict, key: str) -> str | None:
        """The prompt a start (key "prompt", optional) or prompt message (key "text") carries, checked."""
        if key not in message and message["type"] == "start":
            return None
        text = message.get(key)
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            shown = f"{len(text)} characters" if isinstance(text, str) else type(text).__name__
            raise _Refused(WSCloseCode.UNSUPPORTED_DATA, f'{message["type"]} message: "{key}" must be a string of '
                           f"at most {MAX_PROMPT_CHARS} characters (got {shown})")
        if self.engine.text_encoder is None:
            raise _Refused(WSCloseCode.UNSUPPORTED_DATA, "prompts are not taken: this model was trained without "
                           'text (its checkpoint names no text encoder; "ready" says "prompts": false)')
        return text

    def _audio(self, data: bytes) -> np.ndarray:
        self._check_size(data)
        if len(data) % 2:
            raise _Refused(WSCloseCode.UNSUPPORTED_DATA, f"audio message of {len(data)} bytes: expected 16-bit "
                           "mono PCM at 16 kHz (an even number of bytes)")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

    async def _run_session(self, ws: web.WebSocketResponse) -> None:
        msg = await self._receive(ws, "start message")
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return
        start = self._control(msg.data) if msg.type == WSMsgType.TEXT else {}
        if start.get("type") != "start":
            raise _Refused(WSCloseCode.UNSUPPORTED_DATA, 'expected {"type": "start"} as the first message')
        prompt = self._prompt(start, "prompt")
        session_id = uuid.uuid4().hex[:8]
        session = LiveSession(self.options, session_id)
        self.sessions[session_id] = session
        outbox = _Outbox(self.options.max_queued_frames)
        wake, stopping = asyncio.Event(), asyncio.Event()
        tasks: list[asyncio.Task] = []
        # open inside the try: a cancellation at any await from here on still closes the worker's streamer
        try:
            try:
                await self.workers.call("open", session_id, prompt)
            except RuntimeError as err:
                raise _Refused(WSCloseCode.INTERNAL_ERROR, f"no generation worker: {err}", "error") from None
            if prompt is not None:
                session.prompt_applied(prompt, 0)
            log.info("session %s started (%d active)", session_id, len(self.sessions))
            tasks = [asyncio.create_task(self._pump(session, outbox, wake, stopping)),
                     asyncio.create_task(self._send(ws, session, outbox)),
                     asyncio.create_task(self._tick(session, outbox))]
            await ws.send_json({"type": "ready", "session": session_id, "fps": FPS, "sample_rate": SAMPLE_RATE,
                                "width": self.engine.width, "height": self.engine.height,
                                "image_format": self.options.image_format,
                                "max_message_bytes": self.options.max_message_bytes,
                                "max_backlog_s": self.options.max_backlog_s,
                                "idle_timeout_s": self.options.idle_timeout_s,
                                "prompts": self.engine.text_encoder is not None, "prompt": prompt,
                                "max_prompt_chars": MAX_PROMPT_CHARS})
            await self._read_audio(ws, session, wake, tasks[0],
                                   busy=lambda: session.generating or wake.is_set() or not outbox.empty())
            # stop: generate what is left, send it, then the summary
            stopping.set()
            wake.set()
            await asyncio.wait([tasks[0]])
            _raise_if_failed(tasks[0])
            outbox.closed = True
            outbox.ready.set()
            await tasks[1]
            session.end_reason = "stop"
            await ws.send_json({"type": "end", **session.stats()})
            await ws.close()
        except _Refused as err:
            session.end_reason = str(err)
            raise
        except (ConnectionError, asyncio.CancelledError):
            session.end_reason = "peer gone"
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if session.end_reason is None:
                session.end_reason = "peer gone"
            summary = session.stats()
            self.finished.append(summary)
            del self.sessions[session_id]
            await self._close_streamer(session_id)
            log.info("session %s ended (%s): %d frames sent, %s frames/s, median latency %s ms", session_id,
                     session.end_reason, summary["frames_sent"], _fmt(summary["fps_steady"]),
                     _fmt(summary["latency_ms_median"]))

    async def _close_streamer(self, session_id: str) -> None:
        """Free the session's streamer in its worker (also when its open failed or was cancelled)."""
        try:
            await self.workers.call("close", session_id)
        except RuntimeError:
            pass  # its worker is gone already

    async def _read_audio(self, ws, session: LiveSession, wake: asyncio.Event, pump: asyncio.Task, busy) -> None:
        """Audio and prompt messages until stop; returns on stop, raises on anything that ends the session
        otherwise. A prompt waits in the session for the pump, which hands it over before the next audio."""
        while True:
            msg = await self._receive(ws, "audio", busy)
            _raise_if_failed(pump)
            if msg.type == WSMsgType.BINARY:
                session.receive_audio(self._audio(msg.data))
                wake.set()
            elif msg.type == WSMsgType.TEXT:
                message = self._control(msg.data)
                if message["type"] == "stop":
                    return
                if message["type"] == "start":
                    raise _Refused(WSCloseCode.UNSUPPORTED_DATA, "session already started")
                session.pending_prompt = self._prompt(message, "text")
                wake.set()
            else:  # CLOSE / CLOSING / CLOSED: the peer left
                raise ConnectionResetError("peer closed the connection")

    async def _pump(self, session: LiveSession, outbox: _Outbox, wake: asyncio.Event, stopping: asyncio.Event) -> None:
        """Generate from the audio as it comes, one streamer call at a time, in the session's worker."""
        while True:
            session.generating = False
            await wake.wait()
            session.generating = True
            wake.clear()
            if session.pending_prompt is not None:  # before the audio: it applies from the next block
                text, session.pending_prompt = session.pending_prompt, None
                first = await self.workers.call("prompt", session.session_id, text)
                outbox.put_message(session.prompt_applied(text, first))
            samples = session.take_audio(self.engine.block_samples)  # one block a call: sessions take turns
            if samples.size:
                if self.observer is not None:
                    self.observer.audio(session.session_id, samples)
                self._deliver(session, outbox, await self.workers.call("push", session.session_id, samples))
            if stopping.is_set() and not session.intake.pending_samples:
                self._deliver(session, outbox, await self.workers.call("finish", session.session_id))
                return
            if session.intake.pending_samples:
                wake.set()  # audio came in while generating

    def _deliver(self, session: LiveSession, outbox: _Outbox, generated: Generated) -> None:
        frames = session.trace(generated.first, generated.images, generated.seconds)
        if not frames:
            return
        if self.observer is not None:
            self.observer.frames(session.session_id, frames)
        session.frames_dropped += outbox.put_frames(frames)

    async def _send(self, ws: web.WebSocketResponse, session: LiveSession, outbox: _Outbox) -> None:
        """The one writer of the session's socket while it streams."""
        while True:
            await outbox.ready.wait()
            outbox.ready.clear()
            while not outbox.empty():
                if outbox.messages:
                    await ws.send_json(outbox.messages.popleft())
                    continue
                frame = outbox.frames.popleft()
                await ws.send_bytes(FRAME_HEADER.pack(frame.index, frame.peer_sample) + frame.image)
                session.mark_sent(frame)
            if outbox.closed:
                return

    async def _tick(self, session: LiveSession, outbox: _Outbox) -> None:
        while True:
            await asyncio.sleep(self.options.stats_interval_s)
            outbox.put_message({"type": "stats", **session.stats()})

    # -- running ---------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        """Serve in the running event loop; returns the runner (cleanup() stops it) and the bound port."""
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]  # port 0 asks the OS for a free one
        return runner, int(bound)


def _raise_if_failed(pump: asyncio.Task) -> None:
    """A failed generation ends its session with the reason (1011), not the server."""
    if pump.done() and not pump.cancelled() and pump.exception() is not None:
        error = pump.exception()
        log.error("session generation failed: %s", error)
        raise _Refused(WSCloseCode.INTERNAL_ERROR, str(error).split(" | ")[0][:300], "error")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
