"""Is `make demo` without captions what it was? Fingerprints of the demo's data and teacher, for two trees.

Run it with the working directory at the tree to measure (this file's path may be in another tree):

    cd /work/main && python /path/to/bench/demo_unchanged.py --out /tmp/demo_main --data /tmp/demo_main/data
    python bench/demo_unchanged.py --out /tmp/demo_branch --data /tmp/demo_main/data

Prints JSON: the sha256 over the demo's SynthTalk shards (its default settings) written with each mp4 member
replaced by the sha256 of the frames and audio given to the encoder (x264's bytes vary from run to run on a
busy machine, its inputs must not), and the demo teacher stage's losses for `--steps` steps on `--data` (pass
the same folder in both trees, so both train on the same bytes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path


def _sha(array) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def data_fingerprint(out: Path) -> str:
    """sha256 over the demo's shards written under `out` with mp4 = sha256 of the encoder's inputs."""
    import lit_avatar.data.media as media
    from lit_avatar import demo

    real = media.encode_video
    media.encode_video = lambda frames, fps, audio=None, *a, **k: (_sha(frames) + _sha(audio)).encode()
    try:
        demo.make_data(out, demo.build_parser().parse(["--out", str(out.parent)]))
    finally:
        media.encode_video = real
    digest = hashlib.sha256()
    for tar in sorted(out.glob("*.tar")):
        digest.update(tar.read_bytes())
    return digest.hexdigest()


def teacher_losses(data: Path, logs: Path, steps: int) -> list[float]:
    """The demo's teacher stage (its batch and seed) for `steps` steps on `data`; the loss of every step."""
    from lit_avatar import demo, pipeline

    args = demo.build_parser().parse(["--out", str(logs)])
    stage = pipeline.teacher_stage(steps, [f"--data.init_args.batch_size={args.teacher_batch}"])
    ckpt, _ = pipeline.fit_stage(stage, data, logs, args.seed, quiet=True,
                                 extra_callbacks=["lit_avatar.modules.callbacks.LossHistory"])
    return json.loads((ckpt.parents[1] / "loss_history.json").read_text())["losses"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="scratch folder")
    parser.add_argument("--data", default=None, help="demo data the teacher trains on (default: write it under --out)")
    parser.add_argument("--steps", type=int, default=20, help="teacher steps")
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())  # the tree measured is the working directory's
    import torch

    torch.set_num_threads(1)
    from lit_avatar import demo

    out = Path(args.out)
    fingerprint = data_fingerprint(out / "fingerprint" / "data")
    data = Path(args.data) if args.data else out / "data"
    if not args.data:
        demo.make_data(data, demo.build_parser().parse(["--out", str(out)]))
    losses = teacher_losses(data, out / "logs", args.steps)
    print(json.dumps({"tree": str(Path(demo.__file__).parents[1]), "demo_data_inputs_sha256": fingerprint,
                      "teacher_data": str(data), "teacher_losses": losses}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
