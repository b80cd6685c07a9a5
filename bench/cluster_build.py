"""`data build` on the local engine vs the Ray engine, side by side on the same sources: clips/s and the
Ray overhead, with 1 and 2 workers. The Ray cluster is started once (its start-up is reported apart);
each Ray build pays for its worker processes (cold: a new cluster per build would add the start-up).

    python -m bench.cluster_build --sources 8 --seconds 10
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from lit_avatar.command import CommandParser


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _timed_build(argv: list[str]) -> tuple[float, int]:
    from data_tools.build import build

    started = time.perf_counter()
    manifest = build(argv)
    return time.perf_counter() - started, manifest["counts"]["clips"]


def main(argv: list[str] | None = None) -> int:
    """Generate the set, build it with each engine and worker count, print one JSON line.

    Args:
        argv: command-line arguments (see --help).
    """
    parser = CommandParser(prog="python -m bench.cluster_build", description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=8, help="generated videos")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--size", type=int, default=256, help="output side (--size of the build)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    args = parser.parse(argv)

    from bench.build_throughput import make_sources
    from data_tools.ray_engine import import_ray

    ray = import_ray()
    rows, cluster_s = [], None
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        root = Path(tmp)
        make_sources(root / "src", args.sources, args.seconds, 640, 360)
        common = ["--src", str(root / "src"), "--size", str(args.size), "--clip-seconds", "5", "--no-face",
                  "--val-fraction", "0", "--sources-per-job", "1", "--no-progress"]
        reference = None
        for workers in args.workers:
            for engine in ("local", "ray"):
                if engine == "ray" and cluster_s is None:
                    started = time.perf_counter()
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="error")
                    cluster_s = time.perf_counter() - started
                out = root / f"{engine}{workers}"
                seconds, clips = _timed_build([*common, "--out", str(out), "--engine", engine,
                                               "--workers", str(workers)])
                reference = reference or _hashes(out)
                rows.append({"engine": engine, "workers": workers, "clips": clips, "seconds": round(seconds, 3),
                             "clips_per_second": round(clips / seconds, 3), "same_shards": _hashes(out) == reference})
        ray.shutdown()
    local = {r["workers"]: r["seconds"] for r in rows if r["engine"] == "local"}
    for row in rows:
        row["seconds_vs_local"] = round(row["seconds"] / local[row["workers"]], 3)
    print(json.dumps({"bench": "cluster_build", "rows": rows, "ray_cluster_start_seconds": round(cluster_s, 3),
                      "settings": {"sources": args.sources, "seconds": args.seconds, "size": args.size},
                      "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
