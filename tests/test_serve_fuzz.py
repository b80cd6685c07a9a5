"""The live protocol, fuzzed: random peers (JSON of any shape, unknown types, binary of any length, oversize
messages, start/stop in any order, prompts of any shape in start and prompt messages, abrupt disconnects,
several at once) against one running server whose model takes prompts.

Invariants after every example: the server still answers; a well-behaved peer running beside the others got
all its frames, in order; every peer that broke the protocol got the error and close code the protocol
promises (predicted by `expected` below from the server's documented rules); nothing stays behind (no
session, streamer or socket), so memory stays bounded. Hypothesis runs derandomised (a fixed seed): the quick
variant runs QUICK_EXAMPLES examples in `make test`, the slow one SLOW_EXAMPLES.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serve_helpers import PeerResult, _read, image_file, noise_audio, run_peer, tiny_checkpoint

from lit_avatar.inference.prompt_option import MAX_PROMPT_CHARS
from lit_avatar.serve.app import TRANSPORT_SLACK
from lit_avatar.serve.cli import build_parser, build_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LIMIT = 2048  # --max-message-kib 2
QUICK_EXAMPLES, SLOW_EXAMPLES = 100, 1000
GOOD_AUDIO_S = 0.24
GOOD_START = json.dumps({"type": "start", "prompt": "a woman talking, smiling"})


class _Running:
    """The server on a free loopback port, in its own thread's event loop (it outlives every example)."""

    def __init__(self, server) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, port = self.run(server.start("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.stats_url = f"http://127.0.0.1:{port}/stats"

    def run(self, coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_text_encoder):
    folder = tmp_path_factory.mktemp("serve_fuzz")
    args = build_parser().parse_args([
        "--ckpt", tiny_checkpoint(folder / "s.ckpt", text_encoder=tiny_text_encoder), "--ref",
        image_file(folder / "ref.png"), "--port", "0", "--workers", "0", "--max-sessions", "8",
        "--max-message-kib", str(LIMIT / 1024), "--max-backlog", "60", "--prompt-cache", str(folder / "prompts")])
    running = _Running(build_server(args))
    yield running
    running.close()


# -- what peers send ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
types = st.sampled_from(["start", "stop", "dance", "", "START", "ready", "end"]) | st.text(max_size=10) | json_values
texts = st.one_of(
    json_values.map(json.dumps),  # JSON of any shape
    st.builds(lambda t, extra: json.dumps({**extra, "type": t}), types, st.dictionaries(st.text(max_size=5),
                                                                                        json_values, max_size=2)),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40),  # mostly not JSON
    st.integers(LIMIT + 1, TRANSPORT_SLACK * LIMIT + 200).map(lambda n: json.dumps({"type": "start", "pad": "x" * n})),
)
prompt_values = json_values | st.text(max_size=60) | st.integers(MAX_PROMPT_CHARS - 2, MAX_PROMPT_CHARS + 2).map(
    lambda n: "y" * n)  # at and just past the length bound (the message still fits the size limit)
prompts = st.one_of(
    prompt_values.map(lambda v: json.dumps({"type": "prompt", "text": v})),
    prompt_values.map(lambda v: json.dumps({"type": "start", "prompt": v})),
    st.just(json.dumps({"type": "prompt"})),  # no text at all
)
START, STOP = ("text", json.dumps({"type": "start"})), ("text", json.dumps({"type": "stop"}))
actions = st.one_of(
    st.just(START),
    st.just(STOP),
    prompts.map(lambda t: ("text", t)),
    texts.map(lambda t: ("text", t)),
    st.integers(0, 800).map(lambda n: ("binary", bytes(2 * n))),  # audio of any (even) size
    st.integers(0, 2 * LIMIT).map(lambda n: ("binary", bytes(n))),  # any length, odd and over the limit too
    st.integers(1, 3000).map(lambda n: ("binary", bytes(TRANSPORT_SLACK * LIMIT + n))),  # cut by the transport
    st.just(("vanish", None)),
)
# most peers start properly, so that what follows a start is explored as much as what precedes it
peer = st.builds(lambda start, rest: [START, *rest] if start else rest, st.integers(0, 3).map(bool),
                 st.lists(actions, min_size=1, max_size=6))
peers = st.lists(peer, min_size=1, max_size=3)


@dataclass
class Outcome:
    """What the protocol promises a peer: how far its messages go, and how the server ends the session."""

    sent: int  # messages the peer sends (the rest would come after the server's verdict)
    error: str | None  # part of the error message, or None when no error is due
    code: int | None  # close code; None: the peer leaves first (vanishes or closes)
    vanish: bool = False


def _control(text: str) -> tuple[str | None, dict | None]:
    try:
        message = json.loads(text)
    except ValueError:
        return None, None
    kind = message.get("type") if isinstance(message, dict) else None
    return (kind, message) if kind in ("start", "prompt", "stop") else ("unknown", message)


def _bad_prompt(message: dict, key: str) -> bool:
    """A start's optional "prompt" or a prompt message's "text" that is not a string of at most the bound."""
    if message["type"] == "start" and key not in message:
        return False
    text = message.get(key)
    return not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS


def expected(peer: list[tuple[str, object]]) -> Outcome:
    """The server's rules (app.py's docstring), applied to one peer's messages in order."""
    started = False
    for n, (kind, data) in enumerate(peer, 1):
        if kind == "vanish":
            return Outcome(n, None, None, vanish=True)
        size = len(data.encode() if kind == "text" else data)
        if size > TRANSPORT_SLACK * LIMIT:
            return Outcome(n, None, 1009)  # cut by the WebSocket layer: close code only
        if kind == "binary" and not started:
            return Outcome(n, 'expected {"type": "start"} as the first message', 1003)
        if kind == "binary":
            if size > LIMIT:
                return Outcome(n, f"message of {size} bytes exceeds the limit", 1009)
            if size % 2:
                return Outcome(n, "an even number of bytes", 1003)
            continue
        if len(data) > LIMIT:
            return Outcome(n, f"message of {len(data)} bytes exceeds the limit", 1009)
        control, message = _control(data)
        if control is None:
            return Outcome(n, "text message is not JSON", 1003)
        if control == "unknown":
            return Outcome(n, "unknown message type", 1003)
        if not started and control != "start":
            return Outcome(n, 'expected {"type": "start"} as the first message', 1003)
        if started and control == "start":
            return Outcome(n, "session already started", 1003)
        if control == "stop":
            return Outcome(n, None, 1000)  # the rest is generated, then "end" and a normal close
        key = "prompt" if control == "start" else "text"
        if _bad_prompt(message, key):
            return Outcome(n, f'"{key}" must be a string of at most {MAX_PROMPT_CHARS} characters', 1003)
        started = True
    return Outcome(len(peer), None, None)  # the peer closes the socket itself


async def _bad_peer(url: str, peer: list, outcome: Outcome) -> PeerResult:
    import aiohttp

    result = PeerResult()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        reader = asyncio.create_task(_read(ws, result))
        for kind, data in peer[:outcome.sent]:
            if kind == "vanish":
                ws._writer.transport.abort()  # no close frame: the socket just dies
                reader.cancel()
                return result
            try:
                await (ws.send_str(data) if kind == "text" else ws.send_bytes(data))
            except ConnectionError:
                break  # the server may close first (e.g. a cut oversize message)
        if outcome.code is None:
            await ws.close()  # leave without a stop
        await asyncio.wait_for(reader, 60)
        result.close_code = ws.close_code
    return result


def _check(peer: list, outcome: Outcome, result: PeerResult) -> None:
    if outcome.vanish:
        return
    errors = result.errors()
    if outcome.error is None:
        assert errors == [], (peer, errors)
    else:
        assert len(errors) == 1 and outcome.error in errors[0], (peer, outcome, errors)
    if outcome.code is not None:
        assert result.close_code == outcome.code, (peer, outcome, result.close_code, errors)
    indices = [index for index, _, _ in result.frames]
    assert indices == list(range(len(indices)))
    if outcome.code == 1000:
        assert result.of_type("end") and result.of_type("end")[0]["frames_sent"] == len(indices)


def _example(running: _Running, bad: list) -> None:
    server, outcomes = running.server, [expected(peer) for peer in bad]
    good_audio = noise_audio(GOOD_AUDIO_S)

    async def everyone():
        return await asyncio.gather(run_peer(running.url, good_audio, chunk=640, first=[GOOD_START]),
                                    *[_bad_peer(running.url, p, o) for p, o in zip(bad, outcomes)])

    good, *results = asyncio.run(everyone())
    running.run(server.wait_quiet())
    assert good.errors() == [] and good.close_code == 1000
    assert [index for index, _, _ in good.frames] == list(range(math.ceil(GOOD_AUDIO_S * 25)))
    for peer, outcome, result in zip(bad, outcomes, results):
        _check(peer, outcome, result)
    # nothing stays behind: every session, streamer and socket of this example is gone
    assert not server.sessions and not server._sockets and server._slots_taken == 0
    assert server.workers._streams.streamers == {} and server.workers._streams.frames_made == {}
    assert len(server.finished) <= 100 and set(server.refused) <= {"protocol", "oversize", "transport"}


# every rule at least once, whatever the example count
RULES = [
    [[START, ("binary", bytes(1280)), STOP], [START, ("binary", bytes(LIMIT + 2))], [("binary", bytes(10))]],
    [[START, ("binary", bytes(3))], [START, ("vanish", None)], [("text", "{not json")]],
    [[START, START], [("text", json.dumps({"type": "dance"}))], [STOP]],
    [[START, ("binary", bytes(TRANSPORT_SLACK * LIMIT + 10))], [("text", json.dumps([1, {"type": "start"}]))],
     [START, ("binary", bytes(640))]],
    [[START, ("binary", bytes(1280)), ("text", json.dumps({"type": "prompt", "text": "red hair"})),
      ("binary", bytes(1280)), STOP], [("text", json.dumps({"type": "prompt", "text": "a"}))],
     [("text", json.dumps({"type": "start", "prompt": 3}))]],
    [[START, ("text", json.dumps({"type": "prompt", "text": "y" * (MAX_PROMPT_CHARS + 1)}))],
     [("text", json.dumps({"type": "start", "prompt": "mouth open"})), ("binary", bytes(640)), STOP],
     [START, ("text", json.dumps({"type": "prompt"}))]],
]


def _fuzz(running, examples: int):
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(peers)
    @example(RULES[0])
    @example(RULES[1])
    @example(RULES[2])
    @example(RULES[3])
    @example(RULES[4])
    @example(RULES[5])
    def run(bad):
        _example(running, bad)
        counted.append(1)

    counted: list[int] = []
    run()
    print(f"serve fuzz: {len(counted)} examples")  # shown with -s; the report quotes it
    return len(counted)


def test_fuzzed_peers_never_disturb_the_server(running):
    assert _fuzz(running, QUICK_EXAMPLES) >= QUICK_EXAMPLES + len(RULES)


@pytest.mark.slow
def test_fuzzed_peers_many_examples(running):
    assert _fuzz(running, SLOW_EXAMPLES) >= SLOW_EXAMPLES + len(RULES)
