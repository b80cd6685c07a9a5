"""Find raw videos, name their identities, split them and group them into shard jobs.

Why a fixed plan: a build must be resumable and parallel. Sorting the sources and cutting the
sorted list into fixed jobs makes the job that writes any given shard a pure function of the
inputs and the options, so a re-run knows which shards are finished and rebuilds exactly the
others, byte for byte, whatever the number of workers.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from lit_avatar.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Source:
    """One raw video and the person in it.

    Args:
        path: the video file.
        identity: who speaks (parent folder name, or the file list's first column).
        name: a stable, unique, tar-safe name for keys (identity, stem and a short path hash).
        caption: the text every clip of this video gets as its `txt` member (`data build --captions`).
    """

    path: str
    identity: str
    name: str
    caption: str | None = None


@dataclass
class ShardJob:
    """A fixed group of sources of one split, written by one worker into `prefix`-NN.tar parts.

    Args:
        split: "train" or "val".
        index: job number inside its split (names the shards).
        sources: the sources, in plan order.
    """

    split: str
    index: int
    sources: list[Source] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.split}-{self.index:05d}"


def safe_token(text: str) -> str:
    """A tar/webdataset-safe token: dots would split keys from extensions, slashes make folders."""
    token = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return token or "x"


def _source(path: Path, identity: str, root: Path | None) -> Source:
    shown = str(path.relative_to(root)) if root is not None else str(path)
    digest = hashlib.sha1(shown.encode("utf-8")).hexdigest()[:8]
    name = f"{safe_token(identity)}__{safe_token(path.stem)}__{digest}"
    return Source(path=str(path), identity=identity, name=name)


def _from_dir(root: Path) -> list[Source]:
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    # files directly in the root have no person folder: their identity is their own stem
    return [_source(p, p.parent.name if p.parent != root else p.stem, root) for p in found]


def _from_list(list_file: Path) -> list[Source]:
    sources = []
    base = list_file.parent
    for number, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            identity, _, path_text = line.partition("\t")
            identity, path_text = identity.strip(), path_text.strip()
            if not identity or not path_text:
                raise UserError(f"{list_file}:{number}: expected 'identity<TAB>path' or a path, got {raw!r}")
        else:
            identity, path_text = "", line
        path = Path(path_text)
        path = path if path.is_absolute() else base / path
        sources.append(_source(path, identity or path.parent.name, None))
    return sources


def scan_sources(src: str) -> list[Source]:
    """All videos under a folder (recursive), or listed in a text file, sorted by (identity, path).

    Args:
        src: a folder scanned for .mp4 .mov .mkv .avi .webm, or a text file with one `path` or
            `identity<TAB>path` per line (relative paths are relative to the list file; # comments).
    """
    root = Path(src)
    if root.is_dir():
        sources = _from_dir(root)
    elif root.is_file():
        sources = _from_list(root)
    else:
        raise UserError(f"--src {src}: not found (expected a folder of videos or a text file list)")
    if not sources:
        raise UserError(f"--src {src}: no videos found (expected files ending in {' '.join(VIDEO_SUFFIXES)})")
    sources.sort(key=lambda s: (s.identity, s.path))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"--src {src}: the same video is listed twice ({dup}); expected each file once")
    return sources


def split_of(identity: str, val_fraction: float, seed: int) -> str:
    """Train or val by a salted hash of the identity: stable across runs and machines, and no
    person ever appears on both sides.

    Args:
        identity: the person.
        val_fraction: expected share of identities in val, in [0, 1].
        seed: salt; changing it draws a different split.
    """
    digest = hashlib.sha256(f"{seed}:{identity}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2.0 ** 64 < val_fraction else "train"


def plan_jobs(sources: list[Source], val_fraction: float, seed: int, sources_per_job: int) -> list[ShardJob]:
    """Cut the sorted sources of each split into consecutive jobs of `sources_per_job`.

    Args:
        sources: from `scan_sources` (sorted).
        val_fraction: see `split_of`.
        seed: see `split_of`.
        sources_per_job: sources written by one job (its parts are further bounded by size).
    """
    jobs: list[ShardJob] = []
    for split in SPLITS:
        members = [s for s in sources if split_of(s.identity, val_fraction, seed) == split]
        for start in range(0, len(members), sources_per_job):
            jobs.append(ShardJob(split, start // sources_per_job, members[start:start + sources_per_job]))
    return jobs
