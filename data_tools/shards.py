"""Byte-reproducible tar shards, finished atomically; the build's bounded parts, marked done per job.

Why byte-reproducible: a build that is killed and resumed must give the same shards as one that
never stopped, and the easiest proof is equal bytes. Tar headers therefore carry a fixed mtime,
owner and mode, members are written in sorted order, and parts roll over at deterministic sample
boundaries. `ShardFile` is the one shard writer (the build's ShardSink and SynthTalk write through it):
plain tarfile rather than webdataset's TarWriter, which writes the same layout but imports torch in
every build worker.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lit_avatar.data.atomic import TEMP_SUFFIX, atomic_path, is_temp

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile pads the archive to whole records
DONE_SUFFIX = ".done.json"
PART_SUFFIX = ".tar"


def member_bytes(sample: dict[str, Any]) -> int:
    """Bytes a sample adds to a tar: one header block per member plus data padded to blocks.

    Args:
        sample: webdataset sample dict of bytes values.
    """
    total = 0
    for name, value in sample.items():
        if name.startswith("_"):
            continue
        total += TAR_BLOCK + -(-len(value) // TAR_BLOCK) * TAR_BLOCK
    return total


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ShardFile:
    """One tar shard in the webdataset layout, under its name only once closed without error.

        with ShardFile(path) as shard:
            for sample in samples:
                shard.write(sample)

    Args:
        path: the shard's final name.
        durable: fsync before it takes the name (see lit_avatar.data.atomic.atomic_path).
    """

    def __init__(self, path: str | Path, durable: bool = False) -> None:
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(path, suffix=TEMP_SUFFIX, durable=durable))
        self._handle = self._stack.enter_context(open(tmp, "wb"))
        self._tar = tarfile.open(fileobj=self._handle, mode="w|", format=tarfile.USTAR_FORMAT)

    def write(self, sample: dict[str, Any]) -> None:
        """Members `<key>.<ext>` in sorted order, with fixed header fields (what makes bytes repeat).

        Args:
            sample: webdataset sample dict (`schema.encode_sample`); keys starting with "_" are skipped.
        """
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = "lit-avatar"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        """Finish the archive and give it its name."""
        self.__exit__(None, None, None)

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._tar.close()  # the end-of-archive blocks
        self._stack.__exit__(exc_type, exc, tb)  # closes the file, then names it or removes it
        return False


class ShardSink:
    """Writes the samples of one job into `<prefix>-NN.tar` parts of at most `max_bytes` each.

    Each part is a ShardFile, so a part file that exists is whole; a sample larger than `max_bytes`
    gets a part of its own.

    Args:
        out_dir: the build's output folder.
        prefix: job prefix, e.g. "train-00003".
        max_bytes: size bound of one part.
    """

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.parts: list[dict[str, Any]] = []
        self._shard: ShardFile | None = None
        self._size = 0
        self._count = 0

    def _part_name(self) -> str:
        return f"{self.prefix}-{len(self.parts):02d}{PART_SUFFIX}"

    def _open(self) -> None:
        self._shard = ShardFile(self.out_dir / self._part_name(), durable=True)
        self._size, self._count = 2 * TAR_BLOCK, 0  # the end-of-archive blocks

    def _finish(self) -> None:
        self._shard.close()
        self._shard = None
        name = self._part_name()
        final = self.out_dir / name
        self.parts.append({"file": name, "samples": self._count, "bytes": final.stat().st_size,
                           "sha256": sha256_file(final)})

    def write(self, sample: dict[str, Any]) -> None:
        """Append one sample (from `schema.encode_sample`), starting a new part when this one is full.

        Args:
            sample: webdataset sample dict.
        """
        size = member_bytes(sample)
        padded = -(-(self._size + size) // TAR_RECORD) * TAR_RECORD
        if self._shard is not None and self._count and padded > self.max_bytes:
            self._finish()
        if self._shard is None:
            self._open()
        self._shard.write(sample)
        self._size += size
        self._count += 1

    def close(self) -> list[dict[str, Any]]:
        """Finish the open part; returns every part written (file, samples, bytes, sha256)."""
        if self._shard is not None:
            self._finish()
        return self.parts


def done_path(out_dir: Path, prefix: str) -> Path:
    return Path(out_dir) / f"{prefix}{DONE_SUFFIX}"


def read_done(out_dir: Path, prefix: str) -> dict[str, Any] | None:
    """The done marker of a job if it is finished and all its parts are present at their sizes."""
    path = done_path(out_dir, prefix)
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for part in done.get("parts", []):
        file = Path(out_dir) / part["file"]
        if not file.is_file() or file.stat().st_size != part["bytes"]:
            return None
    return done


def _owned_by(name: str, prefixes: list[str]) -> bool:
    """Whether a temp file belongs to one of the jobs (`.<prefix>-NN.tar.*.tmp`, `.<prefix>.done.json.*.tmp`)."""
    return any(name.startswith((f".{prefix}-", f".{prefix}{DONE_SUFFIX}")) for prefix in prefixes)


def discard_unfinished(out_dir: Path, prefixes: list[str], all_temps: bool = True) -> int:
    """Delete temp files and the parts of jobs without a valid done marker; returns files removed.

    Args:
        out_dir: the build's output folder.
        prefixes: jobs to rebuild.
        all_temps: remove every temp file in the folder; False removes only the temp files of `prefixes`
            (what a part of a build, or a retried job, may do while other writers share the folder).
    """
    removed = 0
    out_dir = Path(out_dir)
    for path in out_dir.iterdir():
        if is_temp(path.name) and (all_temps or _owned_by(path.name, prefixes)):
            path.unlink(missing_ok=True)
            removed += 1
    for prefix in prefixes:
        for path in list(out_dir.glob(f"{prefix}-*{PART_SUFFIX}")) + [done_path(out_dir, prefix)]:
            if path.exists():
                path.unlink()
                removed += 1
    return removed
