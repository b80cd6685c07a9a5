"""`lit-avatar bench NAME [...]`: dispatch to the benchmark modules, imported only when chosen."""
from __future__ import annotations

import importlib

from lit_avatar.errors import UserError

# benchmark name -> (module, one-line description)
BENCHMARKS = {
    "stream": ("bench.stream", "streaming latency, memory and KV cache vs recomputation (AvatarStreamer)"),
    "train": ("bench.train_step", "one training step per stage (teacher, ODE init, Self-Forcing) with peak memory"),
    "gpu": ("bench.gpu", "everything bench/gpu.sh measures, in one process (--dry-run: tiny, on any device)"),
    "build": ("bench.build_throughput", "data build throughput"),
}


def usage() -> str:
    lines = ["usage: lit-avatar bench NAME [options]   (`lit-avatar bench NAME --help` for options)", "", "benchmarks:"]
    lines += [f"  {name:8s} {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run one benchmark.

    Args:
        argv: [NAME, options...].
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in BENCHMARKS:
        raise UserError(f"bench {name!r}: unknown benchmark; expected one of {', '.join(BENCHMARKS)}")
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(f"bench {name}: {module_name.replace('.', '/')}.py is not in this checkout") from None
    return int(module.main(argv[1:]) or 0)
