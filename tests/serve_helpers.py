"""Shared by the serve tests: a tiny student checkpoint, a server on a free port, a WebSocket peer."""
from __future__ import annotations

import asyncio
import io
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from bench.serve_load import random_checkpoint as tiny_checkpoint  # noqa: F401  (the tests' name)

FRAME_HEADER = struct.Struct("<Ii")


def image_file(path, size=(16, 16), seed: int = 0) -> str:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


def noise_audio(seconds: float, seed: int = 1) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1 - 1 / 32768) * 32768).round().astype("<i2").tobytes()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@dataclass
class PeerResult:
    """What a peer saw: frames (index, peer sample, image bytes), JSON messages, how the socket closed."""

    frames: list[tuple[int, int, bytes]] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    def errors(self) -> list[str]:
        return [m["message"] for m in self.of_type("error")]


async def run_peer(url: str, audio: np.ndarray | None = None, chunk: int = 1600, pace: float = 0.0,
                   stop: bool = True, first: list | None = None, headers: dict | None = None,
                   vanish_after: int | None = None, ready: asyncio.Event | None = None) -> PeerResult:
    """Open a session, send `first` raw messages (or a start message), the audio in chunks (paced at `pace`
    times real time on an absolute schedule, so the rate does not drift; 0 = as fast as possible), then stop
    and read to the end.

    Args:
        vanish_after: drop the TCP connection without a close frame after this many chunks.
        ready: set when the server's "ready" message arrives (the session holds its slot from then on).
    """
    import aiohttp

    result = PeerResult()
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            reader = asyncio.create_task(_read(ws, result, ready))
            for message in (first if first is not None else [json.dumps({"type": "start"})]):
                await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))
            if audio is not None:
                began = asyncio.get_running_loop().time()
                for n, start in enumerate(range(0, len(audio), chunk)):
                    if vanish_after is not None and n == vanish_after:
                        ws._writer.transport.abort()  # vanish: the socket dies, no close frame
                        reader.cancel()
                        return result
                    if ws.closed:
                        break
                    await ws.send_bytes(pcm16(audio[start:start + chunk]))
                    if pace:
                        due = began + (start + chunk) / 16000 / pace
                        await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
            if stop and not ws.closed:
                await ws.send_str(json.dumps({"type": "stop"}))
            await asyncio.wait_for(reader, 60)
            result.close_code = ws.close_code
    return result


async def _read(ws, result: PeerResult, ready: asyncio.Event | None = None) -> None:
    import aiohttp

    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            index, peer = FRAME_HEADER.unpack_from(msg.data)
            result.frames.append((index, peer, msg.data[FRAME_HEADER.size:]))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            result.messages.append(json.loads(msg.data))
            if ready is not None and result.messages[-1].get("type") == "ready":
                ready.set()
    result.close_reason = ws._close_message if hasattr(ws, "_close_message") else None


class Recorder:
    """A SessionObserver that keeps what each session generated (its audio timeline and its sent frames)."""

    def __init__(self) -> None:
        self.taken: dict[str, list[np.ndarray]] = {}
        self.sent: dict[str, list] = {}

    def audio(self, session: str, samples: np.ndarray) -> None:
        self.taken.setdefault(session, []).append(samples.copy())

    def frames(self, session: str, frames: list) -> None:
        self.sent.setdefault(session, []).extend(frames)

    def audio_of(self, session: str) -> np.ndarray:
        return np.concatenate(self.taken.get(session, [np.zeros(0, np.float32)]))
