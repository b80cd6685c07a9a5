"""`lit-avatar serve`: the live path gives the streamer's frames; bad peers are refused, others unaffected."""
from __future__ import annotations

import asyncio
import json
import math
import socket

import numpy as np
import pytest
from serve_helpers import (
    FRAME_HEADER,
    Recorder,
    decode_image,
    image_file,
    noise_audio,
    pcm16,
    run_peer,
    tiny_checkpoint,
)

from lit_avatar.cli import main as cli_main
from lit_avatar.serve.cli import build_parser, build_server
from lit_avatar.serve.intake import AudioIntake
from lit_avatar.serve.options import ServeOptions
from lit_avatar.serve.session import LiveSession

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: extra threads only spin


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    return {"ckpt": tiny_checkpoint(folder / "student.ckpt"), "ref": image_file(folder / "ref.png"),
            "teacher": tiny_checkpoint(folder / "teacher.ckpt", kind="teacher"), "folder": folder}


def _server(files, *flags, observer=None):
    # --workers 0: streamers in a thread of this process (no worker start-up); test_process_workers covers those
    args = build_parser().parse_args(["--ckpt", files["ckpt"], "--ref", files["ref"], "--port", "0", "--workers", "0",
                                      *flags])
    return build_server(args, observer=observer)


def _serve(server, body):
    """Run `body(base_url)` against the server on a free loopback port, in a fresh event loop."""
    async def main():
        runner, port = await server.start("127.0.0.1", 0)
        try:
            return await body(f"127.0.0.1:{port}")
        finally:
            await runner.cleanup()
    return asyncio.run(main())


def _offline_frames(server, audio: np.ndarray) -> np.ndarray:
    streamer = server.engine.new_streamer()
    return np.concatenate([streamer.push_audio(audio), streamer.flush()])


# -- the live path equals the streamer ---------------------------------------------------------------

def test_live_session_sends_the_streamers_frames(files):
    """Frames over the socket (PNG, lossless) equal AvatarStreamer on the same audio, one per 640 samples,
    each tagged with the peer sample its audio ended at; the summary counts them."""
    recorder = Recorder()
    server = _server(files, "--image-format", "png", "--max-backlog", "60", observer=recorder)  # sent at once: no drops
    audio = noise_audio(1.3)
    result = _serve(server, lambda host: run_peer(f"ws://{host}/ws", audio, chunk=1000))
    assert result.errors() == [] and result.close_code == 1000
    ready, end = result.of_type("ready")[0], result.of_type("end")[0]
    assert (ready["width"], ready["height"], ready["fps"], ready["sample_rate"]) == (16, 16, 25, 16000)
    frames = np.stack([decode_image(image) for _, _, image in result.frames])
    assert len(frames) == math.ceil(len(audio) / 640)
    assert np.array_equal(frames, _offline_frames(server, pcm16_roundtrip(audio)))  # the page sends 16-bit PCM
    assert [i for i, _, _ in result.frames] == list(range(len(frames)))
    peers = [p for _, p, _ in result.frames]
    full = len(audio) // 640
    assert peers[:full] == [(i + 1) * 640 - 1 for i in range(full)] and set(peers[full:]) <= {-1}
    assert end["frames_sent"] == len(frames) and end["audio_dropped_s"] == 0 and end["end_reason"] == "stop"
    assert end["latency_ms_median"] is not None and end["latency_ms_median"] >= 0
    session = ready["session"]
    assert np.array_equal(recorder.audio_of(session), pcm16_roundtrip(audio))
    assert len(recorder.sent[session]) == len(frames)
    assert server.finished[-1]["session"] == session and not server.sessions


def pcm16_roundtrip(audio: np.ndarray) -> np.ndarray:
    return np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / 32768.0


def test_jpeg_frames_are_the_streamers_frames_encoded(files):
    from lit_avatar.serve.session import encode_image

    server = _server(files, "--max-backlog", "60", "--jpeg-quality", "80")
    audio = noise_audio(0.6)
    result = _serve(server, lambda host: run_peer(f"ws://{host}/ws", audio))
    assert result.frames[0][2][:2] == b"\xff\xd8"  # JPEG
    expected = [encode_image(f, "jpeg", 80) for f in _offline_frames(server, pcm16_roundtrip(audio))]
    assert [image for _, _, image in result.frames] == expected


# -- behind real time: the drop-oldest policy ----------------------------------------------------

def test_intake_drops_the_oldest_audio_and_traces_the_rest():
    intake = AudioIntake(max_samples=1000)
    a, b, c = (np.full(n, v, np.float32) for n, v in ((600, 1), (600, 2), (300, 3)))
    assert intake.add(a, now=1.0) == 0
    assert intake.add(b, now=2.0) == 200  # the oldest 200 samples of `a` go
    assert intake.pending_samples == 1000 and intake.dropped_samples == 200
    taken = intake.take()
    assert taken.tolist() == [1.0] * 400 + [2.0] * 600 and intake.pending_samples == 0
    assert intake.add(c, now=3.0) == 0
    assert intake.take().size == 300
    # stream samples -> (peer sample, arrival): a's kept part starts at peer sample 200
    assert intake.source(0).peer_sample == 200 and intake.source(0).arrived == 1.0
    assert intake.source(399).peer_sample == 599
    assert intake.source(400).peer_sample == 600 and intake.source(400).arrived == 2.0
    assert intake.source(1299).peer_sample == 1499 and intake.source(1299).arrived == 3.0
    assert intake.source(1300) is None  # past the audio (flush padding)
    assert len(intake._timeline) <= 1  # traced pieces are forgotten


def test_session_behind_real_time_drops_audio_not_sync(files):
    """A backlog over max_backlog loses its oldest audio; the streamer is handed at most step_audio_s a call;
    the video covers exactly the audio kept, and its frames are the streamer's frames of the kept audio."""
    from lit_avatar.serve.workers import ThreadWorkers

    server = _server(files, "--image-format", "png", "--max-backlog", "0.2")
    session = LiveSession(server.options, "s")
    workers = ThreadWorkers(server.engine, "png")
    audio = noise_audio(1.0)
    assert session.receive_audio(audio[:8000]) == 8000 - 3200  # only the newest 0.2 s waits
    assert session.receive_audio(audio[8000:]) == 8000  # more arrives while behind: the older part goes

    async def run():
        await workers.call("open", "s")
        made = []
        while (samples := session.take_audio()).size:
            assert samples.size <= server.options.step_audio_samples
            made.append(await workers.call("push", "s", samples))
        made.append(await workers.call("finish", "s"))
        return made

    made = asyncio.run(run())
    assert session.intake.taken_samples == 3200
    images = [image for g in made for image in g.images]
    assert [g.first for g in made] == list(np.cumsum([0] + [len(g.images) for g in made[:-1]]))
    assert len(images) == math.ceil(3200 / 640)
    expected = _offline_frames(server, audio[-3200:])
    assert np.array_equal(np.stack([decode_image(i) for i in images]), expected)
    assert session.stats()["audio_dropped_s"] == pytest.approx(12800 / 16000)


def test_process_workers_give_the_same_frames(files):
    """Two worker processes, each loading the checkpoint: two concurrent sessions get the frames the
    in-process streamer gives (same seed, same audio). A worker that dies takes no new sessions; with none
    left a peer is told so (1011) and the server itself goes on answering."""
    import aiohttp

    server = _server(files, "--image-format", "png", "--max-backlog", "60", "--workers", "2")
    from lit_avatar.serve.workers import ProcessWorkers

    assert isinstance(server.workers, ProcessWorkers) and len(server.workers._workers) == 2
    audio = [noise_audio(0.8, seed=s) for s in (3, 4)]
    processes = [w.process for w in server.workers._workers]

    async def body(host):
        both = await asyncio.gather(*[run_peer(f"ws://{host}/ws", a, chunk=1600) for a in audio])
        await _until_free(server)
        processes[0].kill()
        processes[0].join(5)
        one_left = await run_peer(f"ws://{host}/ws", audio[0])
        await _until_free(server)
        processes[1].kill()
        processes[1].join(5)
        none_left = await run_peer(f"ws://{host}/ws", audio[0])
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}/stats") as response:
            return both, one_left, none_left, response.status

    both, one_left, none_left, stats_status = _serve(server, body)
    for result, a in zip(both, audio):
        frames = np.stack([decode_image(image) for _, _, image in result.frames])
        assert np.array_equal(frames, _offline_frames(server, pcm16_roundtrip(a)))
    assert one_left.errors() == [] and len(one_left.frames) == 20
    assert "no generation worker: every worker process has ended" in none_left.errors()[0]
    assert none_left.close_code == 1011 and stats_status == 200


# -- refusals: each with a clear message; the server goes on serving ----------------------------

def test_bad_peers_are_refused_and_the_server_keeps_serving(files):
    server = _server(files, "--max-message-kib", "4")
    ok_audio = noise_audio(0.5)

    async def body(host):
        url = f"ws://{host}/ws"
        refused = {
            "garbage text": await run_peer(url, first=["{not json"]),
            "unknown type": await run_peer(url, first=[json.dumps({"type": "dance"})]),
            "audio first": await run_peer(url, first=[b"\x00\x01" * 10]),
            "odd bytes": await run_peer(url, first=[json.dumps({"type": "start"}), b"\x00" * 7]),
            "oversize": await run_peer(url, first=[json.dumps({"type": "start"}), b"\x00" * 6000]),
            "far oversize": await run_peer(url, first=[json.dumps({"type": "start"}), b"\x00" * 100_000]),
        }
        good = await run_peer(url, ok_audio)
        return refused, good

    refused, good = _serve(server, body)
    messages = {k: " ".join(v.errors()) for k, v in refused.items()}
    assert "not JSON" in messages["garbage text"]
    assert "unknown message type 'dance'" in messages["unknown type"]
    assert 'expected {"type": "start"} as the first message' in messages["audio first"]
    assert "7 bytes" in messages["odd bytes"] and "16-bit" in messages["odd bytes"]
    assert "6000 bytes exceeds the limit of 4096" in messages["oversize"]
    assert refused["oversize"].close_code == 1009
    assert refused["far oversize"].close_code == 1009  # cut by the WebSocket layer before it is read
    for kind in ("garbage text", "unknown type", "odd bytes"):
        assert refused[kind].close_code == 1003, kind
    assert good.errors() == [] and len(good.frames) == math.ceil(len(ok_audio) / 640)
    assert not server.sessions and server.refused["protocol"] == 4 and server.refused["oversize"] == 1
    assert server.refused["transport"] == 1


async def _until_free(server) -> None:
    """Wait until every session's handler has finished its cleanup (a peer's end reaches the server a moment
    later); the bound only turns a hang into a failure."""
    await asyncio.wait_for(server.wait_quiet(), 60)


def test_session_cap_and_vanishing_peer(files):
    server = _server(files, "--max-sessions", "1", "--max-backlog", "60")
    audio = noise_audio(2.0)

    async def body(host):
        url = f"ws://{host}/ws"
        streaming = asyncio.Event()
        first = asyncio.create_task(run_peer(url, audio, chunk=1600, pace=2.0, ready=streaming))
        await streaming.wait()  # the first session holds the only slot from here on
        busy = await run_peer(url, noise_audio(0.3))
        done = await first
        await _until_free(server)
        vanished = await run_peer(url, audio, chunk=1600, pace=1.0, vanish_after=5)  # mid-stream
        await _until_free(server)  # the server notices the dead socket and frees the slot
        after = await run_peer(url, noise_audio(0.4))
        return busy, done, vanished, after

    busy, done, vanished, after = _serve(server, body)
    assert "server busy: all 1 sessions in use" in busy.errors()[0] and busy.close_code == 1013
    assert done.errors() == [] and len(done.frames) == math.ceil(len(audio) / 640)  # undisturbed
    assert after.errors() == [] and len(after.frames) == math.ceil(0.4 * 16000 / 640)
    assert [s["end_reason"] for s in server.finished] == ["stop", "peer gone", "stop"]
    assert server.refused["busy"] == 1 and not server.sessions


def test_idle_timeout_waits_for_the_sessions_frames(files):
    """A peer that sends 0.2 s and then stays silent is ended as idle, but only after its audio became frames
    (the idle clock runs while nothing is being generated): it gets every frame the streamer makes of that
    audio without a stop (the rest needs the flush a stop brings). A new peer is served afterwards."""
    server = _server(files, "--idle-timeout", "0.3", "--max-backlog", "60")
    audio = noise_audio(0.2)
    made = len(server.engine.new_streamer().push_audio(pcm16_roundtrip(audio)))
    assert made >= 2

    async def body(host):
        url = f"ws://{host}/ws"
        idle = await run_peer(url, audio, stop=False)  # sends, then stays silent
        await _until_free(server)
        return idle, await run_peer(url, noise_audio(0.4))

    idle, after = _serve(server, body)
    assert "idle: no audio for 0.3 s" in idle.errors()[0] and idle.close_code == 1000
    assert [index for index, _, _ in idle.frames] == list(range(made))
    assert after.errors() == [] and len(after.frames) == 10
    assert server.finished[0]["end_reason"].startswith("idle") and server.refused["idle"] == 1


def test_token_origin_and_static_files(files):
    import aiohttp

    server = _server(files, "--token", "s3cret")

    async def body(host):
        url = f"ws://{host}/ws"
        no_token = await run_peer(url, noise_audio(0.2))
        wrong = await run_peer(url + "?token=guess", noise_audio(0.2))
        foreign = await run_peer(url + "?token=s3cret", noise_audio(0.2), headers={"Origin": "http://evil.example"})
        same_origin = await run_peer(url + "?token=s3cret", noise_audio(0.2), headers={"Origin": f"http://{host}"})
        async with aiohttp.ClientSession() as http:
            pages = {}
            for path in ("/", "/stats", "/stats?token=s3cret", "/static/index.html", "/../../etc/passwd",
                         "/%2e%2e/%2e%2e/etc/passwd", "/index.html"):
                async with http.get(f"http://{host}{path}") as response:
                    pages[path] = (response.status, await response.text(), response.headers)
        return no_token, wrong, foreign, same_origin, pages

    no_token, wrong, foreign, same_origin, pages = _serve(server, body)
    for refused in (no_token, wrong):
        assert "access token missing or wrong" in refused.errors()[0] and not refused.frames
    assert "origin http://evil.example is not this server's page" in foreign.errors()[0]
    assert same_origin.errors() == [] and len(same_origin.frames) == 5
    status, html, headers = pages["/"]
    assert status == 200 and "<canvas" in html and "frame-ancestors" not in html
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert pages["/stats"][0] == 401 and json.loads(pages["/stats?token=s3cret"][1])["max_sessions"] == 4
    for path in ("/static/index.html", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/index.html"):
        assert pages[path][0] == 404, path


def test_page_speaks_the_servers_protocol():
    """The one static page and the server agree on the frame header and message types."""
    from lit_avatar.serve.app import FRAME_HEADER as SERVER_HEADER
    from lit_avatar.serve.app import STATIC

    page = (STATIC / "index.html").read_text()
    assert SERVER_HEADER.format == FRAME_HEADER.format == "<Ii" and SERVER_HEADER.size == 8
    assert "getUint32(0, true)" in page or "getInt32(4, true)" in page
    assert "data.slice(8)" in page
    for needle in ('type: "start"', 'type: "stop"', '"ready"', '"stats"', '"end"', '"error"', "Int16Array"):
        assert needle in page, needle
    assert "<script src" not in page and "<link" not in page  # one static file, nothing fetched


# -- the command's errors: one line, exit 2 ------------------------------------------------------

def _busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_serve_command_errors_are_one_line(files, capsys):
    folder = files["folder"]
    (folder / "junk.png").write_bytes(b"\x89PNG not really")
    sock, port = _busy_port()
    cases = [
        (["--ckpt", str(folder / "missing.ckpt"), "--ref", files["ref"]], "missing.ckpt: not found; expected a causal"),
        (["--ckpt", files["ckpt"], "--ref", str(folder / "junk.png")], "junk.png: cannot read as an image"),
        (["--ckpt", files["teacher"], "--ref", files["ref"]], "teacher checkpoint"),
        (["--ckpt", files["ckpt"], "--ref", files["ref"], "--port", "70000"], "--port 70000: expected 0..65535"),
        (["--ckpt", files["ckpt"], "--ref", files["ref"], "--max-sessions", "0"], "--max-sessions 0: expected >= 1"),
        (["--ckpt", files["ckpt"], "--ref", files["ref"], "--image-format", "gif"], "--image-format 'gif'"),
        (["--ckpt", files["ckpt"], "--ref", files["ref"], "--size", "15x15"],
         "--size '15x15': expected sides that are positive multiples of 4"),
        (["--ckpt", files["ckpt"], "--ref", files["ref"], "--port", str(port)], f"--port {port}: cannot listen"),
    ]
    try:
        for argv, expected in cases:
            assert cli_main(["serve", *argv]) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (argv, err)
    finally:
        sock.close()


def test_options_are_validated():
    with pytest.raises(Exception, match="--max-backlog 0.01"):
        ServeOptions(max_backlog_s=0.01)
    assert ServeOptions(max_backlog_s=1.0).max_backlog_samples == 16000
