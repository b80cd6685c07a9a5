"""SynthTalk: a procedural talking-head data set with exact lip-sync ground truth.

`lit-avatar data synth --out DIR --clips N --seconds S --shards K --size PX --seed X [--val-identities M]`
writes `train-000000.tar ...` (and `val-000000.tar ...` for held-out identities) in the sample schema of
`lit_avatar.data.schema`, then `manifest.json` and, with captions, the captions' text encoder in
`text_encoder/`. Each clip is one "recording" of an identity: speech-like audio, a face whose mouth
opening follows the audio's syllable envelope, small head motion and blinks.
The json stores the per-frame opening (`mouth`) and the `mouth_box`; `ref.png` is the same identity at a
time outside the clip; `txt` is the clip's caption (data_tools.synth_captions: colour words of skin, hair and
background, a mouth-state word), left out with `--no-captions`. Everything is a pure function of (seed, clip
index), so sets are reproducible; captions draw no random numbers, so video and audio do not depend on them.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.shards import ShardFile
from data_tools.synth_captions import clip_caption, write_synthtalk_text_encoder
from data_tools.synth_face import (
    Identity,
    blink_factors,
    head_motion,
    motion_offsets,
    mouth_box,
    render,
    sample_identity,
)
from data_tools.synth_speech import opening_per_frame, synth_speech
from lit_avatar.command import CommandParser
from lit_avatar.data.atomic import write_json_atomic
from lit_avatar.data.schema import FPS, SAMPLE_RATE, SCHEMA_VERSION, encode_sample
from lit_avatar.errors import UserError, output_folder

SOURCE = "synthtalk"
TEXT_ENCODER = "text_encoder"  # the folder under --out that holds the captions' text encoder


@dataclass
class SynthClip:
    """One generated recording before encoding."""

    key: str
    identity: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [T * 640]
    opening: np.ndarray  # float [T]
    box: list[float]
    ref: np.ndarray  # uint8 [H, W, 3]
    ref_time: float
    caption: str = ""


def identity_traits(seed: int, identity_index: int, size: int) -> Identity:
    """The traits of identity `identity_index` of a set made with `seed` (same in every clip)."""
    return sample_identity(np.random.default_rng([seed, 1, identity_index]), size)


def make_clip(seed: int, clip_index: int, identity_index: int, seconds: float, size: int) -> SynthClip:
    """Generate clip `clip_index` (a recording of identity `identity_index`).

    Args:
        seed: data set seed.
        clip_index: which clip; with `seed` it fixes the recording's randomness.
        identity_index: which identity speaks.
        seconds: clip length (rounded to whole frames at 25 fps).
        size: frame side in pixels (even).
    """
    identity = identity_traits(seed, identity_index, size)
    rng = np.random.default_rng([seed, 2, clip_index])
    num_frames = max(1, int(round(seconds * FPS)))
    speech = synth_speech(rng, num_frames / FPS, identity.pitch, SAMPLE_RATE)
    opening = opening_per_frame(speech.envelope, num_frames, FPS, SAMPLE_RATE)
    motion = head_motion(rng)
    times = np.arange(num_frames) / FPS
    frames = render(identity, size, motion_offsets(motion, times), opening, blink_factors(rng, times))
    # the reference: same person, same recording, a moment after the clip ends, eyes open
    ref_time = float(num_frames / FPS + rng.uniform(0.5, 3.0))
    ref = render(identity, size, motion_offsets(motion, np.array([ref_time])),
                 np.array([rng.uniform(0.0, 0.5)]), np.ones(1))[0]
    return SynthClip(key=f"id{identity_index:05d}_c{clip_index:06d}", identity=f"synth{identity_index:05d}",
                     frames=frames, audio=speech.audio, opening=opening, box=mouth_box(identity, size),
                     ref=ref, ref_time=ref_time, caption=clip_caption(identity, opening))


def clip_sample(clip: SynthClip, captions: bool = True) -> dict:
    """The clip in the shard schema (mp4 with AAC, lossless flac, json, ref.png, and its caption as txt)."""
    from lit_avatar.data.media import encode_video

    num_frames, height, width = clip.frames.shape[:3]
    meta = {"identity": clip.identity, "source": SOURCE, "fps": FPS, "num_frames": int(num_frames),
            "sample_rate": SAMPLE_RATE, "width": int(width), "height": int(height), "mouth_box": clip.box,
            "mouth": [round(float(o), 5) for o in clip.opening], "ref_time": round(clip.ref_time, 3)}
    mp4 = encode_video(clip.frames, FPS, clip.audio, SAMPLE_RATE)
    return encode_sample(clip.key, mp4, meta, audio=clip.audio, ref=clip.ref,
                         caption=clip.caption if captions else None)


def write_synthtalk(out: str | os.PathLike, clips: int, seconds: float = 1.0, shards: int = 1, size: int = 32,
                    seed: int = 0, val_identities: int = 0, identities: int | None = None,
                    captions: bool = True) -> dict:
    """Write a SynthTalk set and return its manifest.

    Args:
        out: output folder (created).
        clips: number of clips in all (train + val).
        seconds: clip length.
        shards: number of train shards (at most one per clip); val shards hold as many clips each.
        size: frame side in pixels (even, >= 24).
        seed: data set seed.
        val_identities: identities held out for validation (their clips go to val-*.tar only).
        identities: number of identities (default: max(2, clips // 4), at least val_identities + 1).
        captions: store each clip's caption (`txt`); False writes the shards of the code before captions.
    """
    if clips < 1:
        raise UserError(f"--clips {clips}: expected at least 1")
    if seconds <= 0:
        raise UserError(f"--seconds {seconds}: expected a positive length")
    if shards < 1:
        raise UserError(f"--shards {shards}: expected at least 1")
    if size < 24 or size % 2:
        raise UserError(f"--size {size}: expected an even number of pixels >= 24")
    if val_identities < 0:
        raise UserError(f"--val-identities {val_identities}: expected >= 0")
    count = identities if identities is not None else max(2, clips // 4, val_identities + 1)
    if count <= val_identities or count < 1:
        raise UserError(f"--identities {count}: expected more identities than --val-identities {val_identities}")
    if val_identities and clips < count:
        raise UserError(f"--clips {clips}: expected at least one clip per identity ({count}) when holding some out")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first_val = count - val_identities
    splits: dict[str, list[int]] = {"train": [], "val": []}
    for clip_index in range(clips):
        splits["val" if clip_index % count >= first_val else "train"].append(clip_index)
    per_shard = max(1, math.ceil(len(splits["train"]) / shards))
    started = time.perf_counter()
    manifest = {"name": SOURCE, "schema_version": SCHEMA_VERSION, "fps": FPS, "sample_rate": SAMPLE_RATE,
                "size": size, "seconds": seconds, "seed": seed, "identities": count, "splits": {}}
    if captions:
        manifest["captions"] = "txt"
    for split, indices in splits.items():
        if not indices:
            continue
        shard_count = min(shards, len(indices)) if split == "train" else math.ceil(len(indices) / per_shard)
        names = []
        for shard in range(shard_count):
            members = indices[shard::shard_count]  # round robin spreads identities over shards
            name = f"{split}-{shard:06d}.tar"
            with ShardFile(out / name) as writer:
                for i in members:
                    writer.write(clip_sample(make_clip(seed, i, i % count, seconds, size), captions))
            names.append(name)
        manifest["splits"][split] = {
            "shards": names, "clips": len(indices),
            "identities": sorted({f"synth{i % count:05d}" for i in indices})}
    manifest["seconds_to_generate"] = round(time.perf_counter() - started, 3)
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar data synth",
        description="Write SynthTalk webdataset shards (train-*.tar, val-*.tar) and manifest.json.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--clips", type=int, default=64, help="number of clips (train + val)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip in seconds (25 fps)")
    parser.add_argument("--shards", type=int, default=4, help="number of train shards")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even, >= 24)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (same seed, same data)")
    parser.add_argument("--val-identities", type=int, default=0, help="identities held out into val-*.tar")
    parser.add_argument("--identities", type=int, default=None, help="number of identities (default clips//4)")
    parser.add_argument("--no-captions", action="store_true",
                        help="store no captions (txt) and no text encoder; video and audio are the same either way")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    output_folder(args.out, "--out")
    manifest = write_synthtalk(args.out, args.clips, args.seconds, args.shards, args.size, args.seed,
                               args.val_identities, args.identities, captions=not args.no_captions)
    if not args.no_captions:
        encoder = write_synthtalk_text_encoder(Path(args.out) / TEXT_ENCODER)
        manifest["text_encoder"] = TEXT_ENCODER
        write_json_atomic(Path(args.out) / "manifest.json", manifest)
        print(f"captions in txt; their text encoder (tiny umT5 over the caption words): {encoder}")
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['clips']} clips of {len(info['identities'])} identities in {len(info['shards'])} shards")
    print(f"wrote {Path(args.out) / 'manifest.json'} in {manifest['seconds_to_generate']:.1f} s")
    return 0
