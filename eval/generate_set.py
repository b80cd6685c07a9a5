"""Generate one video per test clip with `lit-avatar generate`, so a table row can be rebuilt by command.

For each audio file NAME.* in --audio, the reference --refs/NAME.(png|jpg) (and its mouth box from
--refs/NAME.json or --real/NAME.json, when present) drives `lit-avatar generate`, writing --out/NAME.mp4 and
its sidecar. Runs generate in a subprocess per clip: eval never imports the training code.

    python -m eval.generate_set --ckpt CKPT --audio DIR --refs DIR --out DIR [-- --no-mci --psb-steps 4]
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from eval.inputs import AUDIO_EXTS, IMAGE_EXTS, list_media, read_sidecar
from lit_avatar.command import CommandParser
from lit_avatar.errors import UserError


def plan(audio_dir: str, refs_dir: str, out_dir: str, real_dir: str | None = None) -> list[dict]:
    """One job per audio file that has a reference image: {name, audio, ref, out, mouth_box}."""
    audios = list_media(audio_dir, AUDIO_EXTS, "--audio")
    refs = list_media(refs_dir, IMAGE_EXTS, "--refs")
    if not audios:
        raise UserError(f"--audio {audio_dir}: no audio files ({', '.join(AUDIO_EXTS)}) found")
    missing = sorted(set(audios) - set(refs))
    if missing:
        raise UserError(f"--refs {refs_dir}: no reference image for {', '.join(missing[:5])} (expected NAME.png/.jpg)")
    jobs = []
    for name in sorted(audios):
        box = read_sidecar(refs[name].with_suffix(".mp4")).get("mouth_box")
        if box is None and real_dir is not None:
            box = read_sidecar(Path(real_dir) / f"{name}.mp4").get("mouth_box")
        jobs.append({"name": name, "audio": str(audios[name]), "ref": str(refs[name]),
                     "out": str(Path(out_dir) / f"{name}.mp4"), "mouth_box": box})
    return jobs


def command_for(job: dict, ckpt: str, extra: list[str]) -> list[str]:
    """The `lit-avatar generate` argv of one job."""
    cmd = [sys.executable, "-m", "lit_avatar.cli", "generate", "--ckpt", ckpt, "--audio", job["audio"],
           "--ref", job["ref"], "--out", job["out"], "--no-progress"]
    if job["mouth_box"] is not None:
        cmd += ["--mouth-box", ",".join(f"{v:.6g}" for v in job["mouth_box"])]
    return cmd + list(extra)


def main(argv: list[str] | None = None) -> int:
    """Entry point; arguments after `--` go to every `lit-avatar generate` call."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = CommandParser(prog="python -m eval.generate_set", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="generator checkpoint")
    p.add_argument("--audio", required=True, help="folder of NAME.wav (one video per file)")
    p.add_argument("--refs", required=True, help="folder of NAME.png reference images (+ optional NAME.json)")
    p.add_argument("--real", help="folder whose NAME.json sidecars give mouth boxes")
    p.add_argument("--out", required=True, help="output folder for NAME.mp4 + NAME.json")
    p.add_argument("--skip-existing", action="store_true", help="keep videos already in --out")
    args = p.parse(argv)
    try:
        jobs = plan(args.audio, args.refs, args.out, args.real)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for job in jobs:
            if args.skip_existing and Path(job["out"]).is_file():
                continue
            code = subprocess.run(command_for(job, args.ckpt, extra), check=False).returncode
            if code != 0:
                raise UserError(f"generate failed for {job['name']} (exit {code}); see the message above")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
