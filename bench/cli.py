"""`lit-avatar bench NAME [...]`: the benchmark modules, each imported only when chosen."""
from __future__ import annotations

from lit_avatar.command import dispatch

BENCHMARKS = {
    "stream": ("bench.stream:main", "streaming latency, memory and KV cache vs recomputation (AvatarStreamer)"),
    "train": ("bench.train_step:main",
              "one training step per stage (teacher, ODE init, Self-Forcing) with peak memory"),
    "gpu": ("bench.gpu:main", "everything bench/gpu.sh measures, in one process (--dry-run: tiny, on any device)"),
    "build": ("bench.build_throughput:main", "data build throughput"),
    "prompt": ("bench.prompt_change:main", "a prompt change mid-stream: block latency with and without one, the "
               "change's cost (cache miss and hit)"),
    "serve": ("bench.serve_load:main", "lit-avatar serve under 1..N concurrent real-time sessions: latency, fairness"),
}


def main(argv: list[str]) -> int:
    """`lit-avatar bench NAME ...`; returns the exit code."""
    return dispatch("lit-avatar bench", BENCHMARKS, argv)
