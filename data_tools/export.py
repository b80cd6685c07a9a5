"""`lit-avatar data export`: shard samples -> the folders `lit-avatar eval` and the table configs read.

`lit-avatar data export --shards "data/synthtalk/val-*.tar" --out runs/synthtalk_eval [--limit N] [--seconds S]`
writes, per sample KEY (the names pair generated and real videos in `eval`):

    OUT/real/KEY.mp4    the clip, H.264 with its audio (the shard's own mp4 when not cut, so no re-encoding)
    OUT/real/KEY.json   sidecar: mouth_box and face_box (normalised [x0, y0, x1, y1]; face_box null when
                        unknown), identity, source, fps, num_frames
    OUT/refs/KEY.png    the reference frame (the shard's ref.*; without one, the clip frame farthest from
                        the exported window, as the training loader picks it)
    OUT/audio/KEY.wav   16 kHz mono 16-bit PCM, from the lossless audio when the shard has it

Every file is written atomically. Samples that cannot be decoded are skipped and reported.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lit_avatar.command import CommandParser
from lit_avatar.data.atomic import write_bytes_atomic, write_json_atomic
from lit_avatar.data.schema import SAMPLE_RATE, SAMPLES_PER_FRAME, SampleError, decode_sample, encode_image
from lit_avatar.errors import UserError

log = logging.getLogger(__name__)
FOLDERS = ("real", "refs", "audio")


def _shard_samples(url: str) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    try:
        yield from wds.tariterators.tarfile_samples([dict(url=url)])
    except Exception as err:  # webdataset raises tarfile/OS/value errors, re-wrapped with extra args
        raise UserError(f"--shards: cannot read shard {url} ({type(err).__name__}: {err.args[0] if err.args else ''})"
                        ) from None


def normalised_face_box(meta: dict[str, Any]) -> list[float] | None:
    """The face box normalised to the stored frame, or None.

    `data build` stores `face_box` in source-video pixels with the square crop `crop` = [x0, y0, side];
    a box already inside [0, 1] is taken as normalised.
    """
    box = meta.get("face_box")
    if not (isinstance(box, list) and len(box) == 4):
        return None
    box = [float(v) for v in box]
    crop = meta.get("crop")
    if isinstance(crop, list) and len(crop) == 3 and float(crop[2]) > 0:
        x0, y0, side = (float(v) for v in crop)
        box = [(box[0] - x0) / side, (box[1] - y0) / side, (box[2] - x0) / side, (box[3] - y0) / side]
    elif max(box) > 1.0:
        return None  # pixels without the crop that would map them onto the frame
    box = [round(float(np.clip(v, 0.0, 1.0)), 5) for v in box]
    return box if box[0] < box[2] and box[1] < box[3] else None


def export_sample(raw: dict[str, Any], out: Path, seconds: float | None = None) -> str:
    """Write one sample's real/refs/audio files; returns its key.

    Raises:
        SampleError: the sample cannot be decoded or has no audio.
    """
    from lit_avatar.data.media import encode_audio, probe, write_video

    decoded = decode_sample(raw)
    key, meta, frames, audio = decoded["key"], decoded["meta"], decoded["video"], decoded["audio"]
    if frames is None or len(frames) == 0:
        raise SampleError(f"sample {key}: no video frames")
    if audio is None:
        raise SampleError(f"sample {key}: no audio (expected .flac, .wav or an audio stream in .mp4)")
    fps = float(meta["fps"])
    count = len(frames)
    if seconds is not None:
        count = max(1, min(count, int(round(seconds * fps))))
    cut = count < len(frames)
    frames = frames[:count]
    wanted = count * SAMPLES_PER_FRAME
    audio = np.pad(audio[:wanted], (0, max(0, wanted - len(audio)))).astype(np.float32)

    video_path = out / "real" / f"{key}.mp4"
    if not cut and probe(bytes(raw["mp4"]), name=f"{key}.mp4")["has_audio"]:
        write_bytes_atomic(video_path, bytes(raw["mp4"]))
    else:
        write_video(video_path, frames, fps=fps, audio=audio, sample_rate=SAMPLE_RATE)
    ref = decoded["ref"]
    if ref is None:  # as the loader does: the frame farthest in time from the (exported) window
        ref = decoded["video"][-1] if cut else decoded["video"][0]
    write_bytes_atomic(out / "refs" / f"{key}.png", encode_image(ref, "png"))
    write_bytes_atomic(out / "audio" / f"{key}.wav", encode_audio(audio, SAMPLE_RATE, codec="wav"))
    sidecar = {"mouth_box": [float(v) for v in meta["mouth_box"]], "face_box": normalised_face_box(meta),
               "identity": meta["identity"], "source": meta["source"], "fps": fps, "num_frames": count}
    write_json_atomic(out / "real" / f"{key}.json", sidecar)
    return key


def export_shards(shards: str | list[str], out: str | os.PathLike, limit: int | None = None,
                  seconds: float | None = None) -> dict[str, Any]:
    """Export the samples of `shards` (in shard order) into `out`; returns a summary.

    Args:
        shards: a shard path, glob, brace list or "::"-joined specs (as the data module takes them).
        out: output folder; real/, refs/ and audio/ are created in it.
        limit: export at most this many samples.
        seconds: cut each clip (video and audio) to its first `seconds`.

    Returns:
        {"exported": [keys], "skipped": [one line per undecodable sample], "shards": [paths]}.
    """
    from lit_avatar.data.shards import expand_shards

    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a positive number of clips")
    if seconds is not None and not seconds > 0:
        raise UserError(f"--seconds {seconds}: expected a positive length")
    paths = expand_shards(shards, "--shards")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    for folder in FOLDERS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    exported: dict[str, str] = {}
    skipped: list[str] = []
    for url in paths:
        if limit is not None and len(exported) >= limit:
            break
        for raw in _shard_samples(url):
            if limit is not None and len(exported) >= limit:
                break
            key = str(raw.get("__key__"))
            if key in exported:
                raise UserError(f"--shards: sample key {key!r} is in both {exported[key]} and {url}; "
                                "expected unique keys (eval pairs videos by name)")
            try:
                exported[export_sample(raw, out, seconds)] = url
            except SampleError as err:
                log.warning("skipping %s", err)
                skipped.append(str(err))
    return {"exported": list(exported), "skipped": skipped, "shards": paths}


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar data export",
        description="Write shard samples as the evaluation inputs: OUT/real/KEY.mp4 (+ KEY.json sidecar with "
                    "mouth_box/face_box), OUT/refs/KEY.png and OUT/audio/KEY.wav (16 kHz mono).")
    parser.add_argument("--shards", required=True,
                        help='shards to export: a path, glob ("data/val-*.tar"), brace list or "::"-joined specs')
    parser.add_argument("--out", required=True, help="output folder (e.g. runs/synthtalk_eval)")
    parser.add_argument("--limit", type=int, default=None, help="export at most N clips (default: all)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="cut each clip to its first S seconds (default: whole clips)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    summary = export_shards(args.shards, args.out, args.limit, args.seconds)
    for line in summary["skipped"][:10]:
        print(f"skipped: {line}")
    print(f"exported {len(summary['exported'])} clips from {len(summary['shards'])} shards to {args.out} "
          f"(real/, refs/, audio/); skipped {len(summary['skipped'])}")
    return 0
