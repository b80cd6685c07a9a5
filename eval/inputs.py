"""Finding and loading what `lit-avatar eval` scores: videos matched by name, sidecars, audio, references."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lit_avatar.errors import UserError

VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".avi", ".webm")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg")


def list_media(folder: str | os.PathLike, exts: tuple[str, ...], arg: str) -> dict[str, Path]:
    """name (stem) -> path of the files in `folder` with one of `exts`; UserError naming `arg` if absent."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{arg} {folder}: not a directory")
    out: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            out.setdefault(p.stem, p)
    return out


@dataclass
class Matching:
    """Generated videos paired with real ones by file name (stem)."""

    gen: dict[str, Path]
    real: dict[str, Path]
    matched: list[str] = field(default_factory=list)
    gen_only: list[str] = field(default_factory=list)
    real_only: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """One line per kind of mismatch, for the console and results.json."""
        lines = []
        if self.gen_only:
            lines.append(f"{len(self.gen_only)} generated video(s) without a real counterpart: "
                         f"{', '.join(self.gen_only[:10])}")
        if self.real_only:
            lines.append(f"{len(self.real_only)} real video(s) without a generated counterpart: "
                         f"{', '.join(self.real_only[:10])}")
        return lines


def match_videos(gen_dir: str | os.PathLike, real_dir: str | os.PathLike | None) -> Matching:
    """Pair --gen and --real videos by name."""
    gen = list_media(gen_dir, VIDEO_EXTS, "--gen")
    if not gen:
        raise UserError(f"--gen {gen_dir}: no video files ({', '.join(VIDEO_EXTS)}) found")
    real = list_media(real_dir, VIDEO_EXTS, "--real") if real_dir is not None else {}
    m = Matching(gen, real)
    m.matched = sorted(set(gen) & set(real))
    m.gen_only = sorted(set(gen) - set(real)) if real_dir is not None else []
    m.real_only = sorted(set(real) - set(gen))
    return m


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path`, or a one-line UserError naming the file and what it should hold.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. "results").
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read {what} JSON ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({what})")
    return data


def read_sidecar(video: Path) -> dict:
    """The optional X.json beside X.mp4 (mouth_box, face_box normalised; landmarks in pixels)."""
    path = video.with_suffix(".json")
    if not path.is_file():
        return {}
    data = read_json_object(path, "sidecar")
    for key in ("mouth_box", "face_box"):
        if key in data and data[key] is None:  # `lit-avatar generate` writes null when no box was given
            del data[key]
        if key in data:
            box = data[key]
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise UserError(f"{path}: key {key!r} must be [x0, y0, x1, y1] normalised to [0, 1]")
    return data


def load_audio_for(name: str, video: Path, audio_dir: str | os.PathLike | None) -> np.ndarray | None:
    """Audio for a video: --audio DIR/NAME.(wav|...) first, else the video's own audio stream, else None."""
    from lit_avatar.data.media import probe, read_audio

    if audio_dir is not None:
        for ext in AUDIO_EXTS:
            p = Path(audio_dir) / f"{name}{ext}"
            if p.is_file():
                return read_audio(p)
    if probe(video)["has_audio"]:
        return read_audio(video)
    return None


def load_reference(name: str, refs_dir: str | os.PathLike | None) -> np.ndarray | None:
    """Reference image (RGB uint8 [H,W,3]) from --refs DIR/NAME.(png|jpg|...) or the first frame of a
    reference video there; None when there is no --refs or no file for this name."""
    if refs_dir is None:
        return None
    root = Path(refs_dir)
    for ext in IMAGE_EXTS:
        p = root / f"{name}{ext}"
        if p.is_file():
            from PIL import Image

            try:
                with Image.open(p) as im:
                    return np.asarray(im.convert("RGB"))
            except OSError as err:
                raise UserError(f"{p}: cannot read image ({err})") from None
    for ext in VIDEO_EXTS:
        p = root / f"{name}{ext}"
        if p.is_file():
            from lit_avatar.data.media import read_video

            return read_video(p)[0][0]
    return None
