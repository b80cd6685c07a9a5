"""`lit-avatar bench serve`: latency and fairness of `lit-avatar serve` under 1..N concurrent sessions.

For each session count, the real command runs in its own process (its default workers) and that many peers
send audio paced in real time (640 samples = one frame every 40 ms) over loopback, then stop. Per session:
frames/s from its first to its last frame made from received audio (25 when it keeps up), audio-to-frame
latency p50/p90 as the server measured it, audio and frames dropped by the backlog policy. Per row: fairness
= max/min of the sessions' median latencies (1.0: all equal) and the load average before and after (the
machine's other work shows up in these figures). JSON on stdout (and --out).

Without --ckpt the checkpoint is a random-weight student of the demo's size and steps (tiny preset, 32x32,
PSB 6,4, MCI, URCR): speed does not depend on the weights' values.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lit_avatar.command import CommandParser, Namespace, int_list
from lit_avatar.errors import UserError, existing_file, output_file

SAMPLES_PER_FRAME = 640


def build_parser() -> CommandParser:
    parser = CommandParser(prog="lit-avatar bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,3,4", help="session counts, one row each (e.g. 1,2,3,4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio each peer streams in real time")
    parser.add_argument("--ckpt", default=None, help="causal checkpoint (default: a random tiny student)")
    parser.add_argument("--ref", default=None, help="reference image (default: random pixels at 32x32)")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers (default: serve's default)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser


def random_checkpoint(path, kind: str = "student", size=(16, 16), preset: str = "micro",
                      text_encoder: str | None = None, text_length: int = 16) -> str:
    """A random-weight causal checkpoint: "micro" (16x16) exercises every code path in a moment; "tiny" at
    32x32 with the demo's rollout (PSB 6,4) costs what the demo's trained student costs per frame. With
    `text_encoder` (a umT5 folder whose width is the preset's text_dim) its record names a PromptEncoder of
    `text_length` tokens and the text path is live, so prompts change the frames."""
    import torch

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
        if text_encoder is not None:
            torch.nn.init.normal_(block.cross_attn.o.weight, std=0.2)
    encoder = MelAudioEncoder(n_mels=model.config.audio_feature_dim, normalize=False)
    if preset == "micro":
        options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[2, 1]), urcr=URCROptions(max_frames=8))
    else:  # experiments/distill/synthtalk_tiny.yaml
        options = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[6, 4]), mci=MCIOptions(frames=2),
                                 urcr=URCROptions(max_frames=8, keep_frames=2))
    vae = PatchVAE(spatial_factor=2, scale=2.0)
    prompts = None
    if text_encoder is not None:
        from lit_avatar.prompts import PromptEncoder

        prompts = PromptEncoder(str(text_encoder), max_length=text_length)
    record = generator_record(kind, model, vae, encoder, options, "generator.", video_size=size, text_encoder=prompts)
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "lit_avatar": record},
               path)
    return str(path)


def random_image(path, size=(32, 32), seed: int = 0) -> str:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


class ServeProcess:
    """`lit-avatar serve` as a user runs it, on a free loopback port."""

    def __init__(self, *argv: str) -> None:
        self.log = tempfile.TemporaryFile("w+")  # serve's log; its last line says why it did not start
        self.process = subprocess.Popen([sys.executable, "-m", "lit_avatar.cli", "serve", "--port", "0", *argv],
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.process.wait(30)
            self.log.seek(0)
            why = (self.log.read().strip().splitlines() or [line.strip() or "no output"])[-1]
            self.close()
            raise UserError(f"lit-avatar serve did not start: {why.removeprefix('error: ')}")
        self.url = f"ws://127.0.0.1:{match.group(1)}/ws"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.process.stdout.close()
        self.log.close()


async def paced_peer(url: str, audio: np.ndarray) -> dict:
    """Start, send `audio` as 16-bit PCM one frame's worth every 40 ms (absolute schedule), stop; the server's
    closing summary ("end"), with the frame indices seen checked to be in order."""
    import aiohttp

    pcm = (np.clip(audio, -1, 1 - 1 / 32768) * 32768).round().astype("<i2")
    end, indices = {}, []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        async def read():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    indices.append(int.from_bytes(msg.data[:4], "little"))
                elif msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") in ("end", "error"):
                    end.update(json.loads(msg.data))

        reader = asyncio.create_task(read())
        await ws.send_str(json.dumps({"type": "start"}))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for n, start in enumerate(range(0, len(pcm), SAMPLES_PER_FRAME)):
            await ws.send_bytes(pcm[start:start + SAMPLES_PER_FRAME].tobytes())
            await asyncio.sleep(max(0.0, began + (n + 1) * SAMPLES_PER_FRAME / 16000 - loop.time()))
        await ws.send_str(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 120)
    if end.get("type") != "end":
        raise RuntimeError(f"session ended with {end}")
    end["frames_in_order"] = indices == list(range(len(indices)))
    return end


def _row(sessions: int, seconds: float, serve_args: list[str]) -> dict:
    load_before = os.getloadavg()
    server = ServeProcess(*serve_args, "--max-sessions", str(sessions))
    try:
        async def peers():
            rng = np.random.default_rng(sessions)
            return await asyncio.gather(*[paced_peer(server.url, (0.1 * rng.standard_normal(int(seconds * 16000)))
                                                     .astype(np.float32)) for _ in range(sessions)])
        ends = asyncio.run(peers())
    finally:
        server.close()
    per_session = [{"fps": end["fps_steady"], "latency_ms_p50": end["latency_ms_median"],
                    "latency_ms_p90": end["latency_ms_p90"], "audio_dropped_s": end["audio_dropped_s"],
                    "frames_sent": end["frames_sent"], "frames_dropped": end["frames_dropped"],
                    "frames_in_order": end["frames_in_order"]} for end in ends]
    medians = [s["latency_ms_p50"] for s in per_session]
    return {"sessions": sessions, "per_session": per_session,
            "fps_min": min(s["fps"] for s in per_session),
            "latency_ms_p50_max": max(medians), "latency_ms_p90_max": max(s["latency_ms_p90"] for s in per_session),
            "fairness": max(medians) / min(medians), "load_average_before": load_before,
            "load_average_after": os.getloadavg()}


def main(argv: list[str]) -> int:
    """Run `lit-avatar bench serve` (see --help)."""
    args: Namespace = build_parser().parse(argv)
    counts = int_list(args.sessions, "--sessions")
    if not args.seconds >= 1:
        raise UserError(f"--seconds {args.seconds}: expected at least 1")
    if args.out:
        output_file(args.out, "--out")
    with tempfile.TemporaryDirectory() as folder:
        ckpt = args.ckpt or random_checkpoint(Path(folder) / "tiny.ckpt", size=(32, 32), preset="tiny")
        ref = args.ref or random_image(Path(folder) / "ref.png")
        existing_file(ckpt, "a causal checkpoint", "--ckpt")
        existing_file(ref, "a reference image", "--ref")
        serve_args = ["--ckpt", ckpt, "--ref", ref, *(["--workers", str(args.workers)] if args.workers is not None
                                                       else [])]
        began = time.perf_counter()
        rows = []
        for count in counts:
            rows.append(_row(count, args.seconds, serve_args))
            print(json.dumps({k: rows[-1][k] for k in ("sessions", "fps_min", "latency_ms_p50_max", "fairness",
                                                        "load_average_before")}), file=sys.stderr, flush=True)
    result = {"benchmark": "serve_load", "seconds_per_session": args.seconds, "cpus": os.cpu_count(),
              "checkpoint": args.ckpt or "random tiny student (32x32, PSB 6,4)", "workers": args.workers,
              "rows": rows, "wall_s": time.perf_counter() - began}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from lit_avatar.data.atomic import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(lambda: main(sys.argv[1:]))
