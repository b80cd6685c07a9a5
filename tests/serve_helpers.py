"""Shared by the serve tests: a tiny student checkpoint, a server on a free port, a WebSocket peer."""
from __future__ import annotations

import asyncio
import io
import json
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

FRAME_HEADER = struct.Struct("<Ii")


def tiny_checkpoint(path, kind: str = "student", size=(16, 16), preset: str = "micro") -> str:
    """A random-weight student: "micro" (16x16) exercises every code path in a moment; "tiny" at 32x32 with
    the demo's rollout (PSB 6,4) costs what the demo's trained student costs per frame."""
    from lit_avatar.checkpoint import generator_record
    from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE

    torch.manual_seed(0)
    model = AvatarDiT(config=get_preset(preset, **({"audio_feature_dim": 16} if preset == "micro" else {})))
    for block in model.blocks:  # a non-zero audio path, so the audio reaches the frames
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    encoder = MelAudioEncoder(n_mels=model.config.audio_feature_dim, normalize=False)
    if preset == "micro":
        options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]), urcr=URCROptions(max_frames=8))
    else:  # experiments/distill/synthtalk_tiny.yaml
        options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[6, 4]), mci=MCIOptions(frames=2),
                                 urcr=URCROptions(max_frames=8, keep_frames=2))
    vae = PatchVAE(spatial_factor=2, scale=2.0)
    record = generator_record(kind, model, vae, encoder, options, "generator.", video_size=size)
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    return str(path)


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
                   vanish_after: int | None = None) -> PeerResult:
    """Open a session, send `first` raw messages (or a start message), the audio in chunks (paced at `pace`
    times real time on an absolute schedule, so the rate does not drift; 0 = as fast as possible), then stop
    and read to the end.

    Args:
        vanish_after: drop the TCP connection without a close frame after this many chunks.
    """
    import aiohttp

    result = PeerResult()
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            reader = asyncio.create_task(_read(ws, result))
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


async def _read(ws, result: PeerResult) -> None:
    import aiohttp

    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            index, peer = FRAME_HEADER.unpack_from(msg.data)
            result.frames.append((index, peer, msg.data[FRAME_HEADER.size:]))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            result.messages.append(json.loads(msg.data))
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
