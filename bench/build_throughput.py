"""Throughput of `lit-avatar data build` on a generated set: clips per second on this machine.

Why generated: the figure must be reproducible anywhere without downloads. The sources are
talking-head-like videos (data_tools.toy_sources) at mixed frame rates, decoded, face-detected with
a toy ONNX detector, cropped, re-encoded (H.264 + AAC + FLAC) and written to shards, i.e. every
stage of a real build except the cost of a large detector network.

    python -m bench.build_throughput --sources 8 --seconds 10 --workers 2
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from lit_avatar.command import CommandParser
from lit_avatar.errors import output_folder


def make_sources(folder: Path, count: int, seconds: float, width: int, height: int) -> float:
    """Write `count` videos (25/30/24 fps in turn, two per identity); returns the seconds it took.

    Args:
        folder: where the videos go.
        count: number of videos.
        seconds: length of each.
        width: frame width.
        height: frame height.
    """
    from data_tools.toy_sources import write_talking_video

    started = time.perf_counter()
    for index in range(count):
        fps = (25, 30, 24)[index % 3]
        suffix = (".mp4", ".mkv", ".mov")[index % 3]
        write_talking_video(folder / f"person{index // 2:03d}" / f"video{index:03d}{suffix}", seconds, fps,
                            width, height, seed=index)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Generate the set, build it once, print one JSON line.

    Args:
        argv: command-line arguments (see --help).
    """
    parser = CommandParser(prog="python -m bench.build_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=8, help="generated videos")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--width", type=int, default=640, help="source width")
    parser.add_argument("--height", type=int, default=360, help="source height")
    parser.add_argument("--size", type=int, default=256, help="output side (--size of the build)")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--workers", type=int, default=2, help="build workers")
    parser.add_argument("--no-face", action="store_true", help="centre crops instead of the toy detector")
    parser.add_argument("--keep", default=None, help="keep the sources and shards in this folder")
    args = parser.parse(argv)
    if args.keep:
        output_folder(args.keep, "--keep")

    from data_tools.build import build
    from data_tools.toy_sources import write_toy_detector

    with tempfile.TemporaryDirectory(prefix="build-bench-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        generate_s = make_sources(root / "src", args.sources, args.seconds, args.width, args.height)
        detector = None if args.no_face else write_toy_detector(root / "det.onnx", (160, 160))
        face = ["--no-face"] if detector is None else ["--face-detector", str(detector), "--min-face-px", "16"]
        build_argv = ["--src", str(root / "src"), "--out", str(root / "out"), "--size", str(args.size),
                      "--clip-seconds", str(args.clip_seconds), "--workers", str(args.workers),
                      "--val-fraction", "0", "--sources-per-job", "1", "--no-progress", *face]
        started = time.perf_counter()
        manifest = build(build_argv)
        seconds = time.perf_counter() - started
    clips = manifest["counts"]["clips"]
    result = {
        "bench": "data_build_throughput",
        "clips": clips,
        "clips_rejected": manifest["counts"]["clips_rejected"],
        "build_seconds": round(seconds, 3),
        "clips_per_second": round(clips / seconds, 3),
        "video_seconds_per_second": round(clips * args.clip_seconds / seconds, 3),
        "generate_seconds": round(generate_s, 3),
        "settings": {"sources": args.sources, "seconds": args.seconds, "source_size": [args.width, args.height],
                     "size": args.size, "clip_seconds": args.clip_seconds, "workers": args.workers,
                     "face": "none" if args.no_face else "toy-onnx"},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
