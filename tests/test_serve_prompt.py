"""Prompts in `lit-avatar serve`: a prompt in the start message and a prompt message mid-stream reach the
session's streamer (the frames are the streamer's with the same change at the block the server reports); a
model trained without text and malformed prompts get the protocol's error and close."""
from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import pytest
from serve_helpers import PeerResult, _read, decode_image, image_file, noise_audio, pcm16, run_peer, tiny_checkpoint

from lit_avatar.inference.prompt_option import MAX_PROMPT_CHARS
from lit_avatar.serve.cli import build_parser, build_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_text_encoder):
    folder = tmp_path_factory.mktemp("serve_prompt")
    return {"text": tiny_checkpoint(folder / "text.ckpt", text_encoder=tiny_text_encoder),
            "plain": tiny_checkpoint(folder / "plain.ckpt"), "ref": image_file(folder / "ref.png"),
            "cache": str(folder / "prompts")}


def _server(files, ckpt: str, *flags):
    args = build_parser().parse_args(["--ckpt", files[ckpt], "--ref", files["ref"], "--port", "0", "--workers", "0",
                                      "--image-format", "png", "--max-backlog", "60", "--prompt-cache",
                                      files["cache"], *flags])
    return build_server(args)


def _serve(server, body):
    async def main():
        runner, port = await server.start("127.0.0.1", 0)
        try:
            return await body(f"ws://127.0.0.1:{port}/ws")
        finally:
            await runner.cleanup()
    return asyncio.run(main())


async def _peer(url: str, start: dict, audio: np.ndarray, prompt_after: int | None = None,
                prompt: object = None) -> PeerResult:
    """start, audio in 640-sample chunks, a prompt message after `prompt_after` chunks (once the server has made
    the frames it can from them: all but a block and the audio look-ahead, so the change lands mid-stream), stop."""
    import aiohttp

    result = PeerResult()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        reader = asyncio.create_task(_read(ws, result))
        await ws.send_str(json.dumps(start))
        for n, begin in enumerate(range(0, len(audio), 640)):
            if n == prompt_after:
                for _ in range(400):  # wait for the frames of the audio sent so far
                    if len(result.frames) >= n - 6 or ws.closed:
                        break
                    await asyncio.sleep(0.01)
                await ws.send_str(json.dumps({"type": "prompt", "text": prompt}))
            if ws.closed:
                break
            await ws.send_bytes(pcm16(audio[begin:begin + 640]))
        if not ws.closed:
            await ws.send_str(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 60)
        result.close_code = ws.close_code
    return result


def _offline(server, audio: np.ndarray, start: str | None, change: str | None, at_frame: int | None) -> np.ndarray:
    """The engine's streamer on the same 16-bit audio, set_prompt(change) once `at_frame` frames are out."""
    audio = np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / 32768.0
    streamer, frames = server.engine.new_streamer(start), []
    for begin in range(0, len(audio), 640):
        if at_frame is not None and streamer.frames_out == at_frame:
            streamer.set_prompt(server.engine.embed(change))
            at_frame = None
        frames.append(streamer.push_audio(audio[begin:begin + 640]))
    frames.append(streamer.flush())
    return np.concatenate(frames)


def test_prompts_at_start_and_mid_stream_reach_the_streamer(files):
    server = _server(files, "text")
    audio = noise_audio(1.2)
    result = _serve(server, lambda url: _peer(url, {"type": "start", "prompt": "a woman talking"}, audio,
                                              prompt_after=12, prompt="red hair smiling"))
    assert result.errors() == [] and result.close_code == 1000
    ready, applied, end = result.of_type("ready")[0], result.of_type("prompt_applied"), result.of_type("end")[0]
    assert ready["prompts"] is True and ready["prompt"] == "a woman talking"
    assert ready["max_prompt_chars"] == MAX_PROMPT_CHARS
    assert len(applied) == 1 and applied[0]["text"] == "red hair smiling"
    at = applied[0]["frame"]
    frames = np.stack([decode_image(image) for _, _, image in result.frames])
    assert [i for i, _, _ in result.frames] == list(range(len(frames))) and 6 <= at < len(frames) - 2
    assert np.array_equal(frames, _offline(server, audio, "a woman talking", "red hair smiling", at))
    unchanged = _offline(server, audio, "a woman talking", None, None)
    assert np.array_equal(frames[:at], unchanged[:at]) and not np.array_equal(frames[at:at + 2], unchanged[at:at + 2])
    assert (end["prompt"], end["prompt_changes"], end["prompt_from_frame"]) == ("red hair smiling", 2, at)
    assert server.finished[-1]["prompt"] == "red hair smiling"


def test_a_model_without_text_refuses_prompts(files):
    """It says so in "ready" (the page disables its prompt box); a prompt anyway ends the session with an error
    naming why (1003), like any message the model cannot take; a session without prompts is served as before."""
    server = _server(files, "plain")
    reason = "prompts are not taken: this model was trained without text"

    async def peers(url):
        return await asyncio.gather(
            run_peer(url, noise_audio(0.3)),
            run_peer(url, noise_audio(0.3), first=[json.dumps({"type": "start", "prompt": "a woman"})]),
            _peer(url, {"type": "start"}, noise_audio(0.6), prompt_after=3, prompt="a woman"))

    plain, at_start, mid = _serve(server, peers)
    assert plain.errors() == [] and plain.of_type("ready")[0]["prompts"] is False and len(plain.frames) == 8
    assert len(at_start.errors()) == 1 and reason in at_start.errors()[0] and at_start.close_code == 1003
    assert not at_start.of_type("ready")
    assert len(mid.errors()) == 1 and reason in mid.errors()[0] and mid.close_code == 1003


@pytest.mark.parametrize("start, prompt, shown", [
    ({"type": "start", "prompt": 5}, None, '"prompt" must be a string of at most 2000 characters (got int)'),
    ({"type": "start", "prompt": "x" * (MAX_PROMPT_CHARS + 1)}, None, "(got 2001 characters)"),
    ({"type": "start"}, ["a"], '"text" must be a string of at most 2000 characters (got list)'),
    ({"type": "start"}, None, "(got NoneType)"),
])
def test_malformed_prompts_are_refused(files, start, prompt, shown):
    server = _server(files, "text", "--max-message-kib", "8")
    result = _serve(server, lambda url: _peer(url, start, noise_audio(0.3), prompt_after=2, prompt=prompt))
    assert len(result.errors()) == 1 and shown in result.errors()[0] and result.close_code == 1003


def test_worker_processes_embed_prompts_through_the_shared_cache(files, tmp_path):
    """A worker process builds its own engine from the checkpoint: it embeds the start prompt and the prompt
    message with its bundle's PromptEncoder over --prompt-cache, and its frames equal the in-process streamer's
    with the same change; the prompts land in the shared cache folder."""
    cache = tmp_path / "shared"
    server = _server(files, "text", "--workers", "1", "--prompt-cache", str(cache))
    audio = noise_audio(0.8)
    result = _serve(server, lambda url: _peer(url, {"type": "start", "prompt": "green background"}, audio,
                                              prompt_after=10, prompt="mouth wide open"))
    assert result.errors() == [] and result.close_code == 1000
    at = result.of_type("prompt_applied")[0]["frame"]
    # written by the worker (the server's own process has embedded nothing yet)
    assert sorted(p.name for p in cache.glob("*/*.safetensors")) == sorted(
        f"{hashlib.sha256(t.encode()).hexdigest()}.safetensors" for t in ("green background", "mouth wide open"))
    assert server.engine.text_encoder.encoded == 0
    frames = np.stack([decode_image(image) for _, _, image in result.frames])
    assert np.array_equal(frames, _offline(server, audio, "green background", "mouth wide open", at))
    assert server.engine.text_encoder.encoded == 0  # read back from the cache the worker filled
