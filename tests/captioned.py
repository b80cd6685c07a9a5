"""Captioned copies of SynthTalk shards: each sample gets a `txt` member (its caption) beside its others."""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path


def caption_shard(source: Path, target: Path, caption_of: Callable[[str, dict], str | None]) -> Path:
    """Copy the tar `source` to `target` (may be the same file), with `<key>.txt` = caption_of(key, sample json)
    where that is not None (right after the sample's other members, so webdataset groups it with them) and no
    caption where it is None (a caption the source had is replaced or dropped)."""
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    groups: dict[str, list] = {}
    for member, data in members:
        key, _, ext = member.name.partition(".")
        if ext != "txt":
            groups.setdefault(key, []).append((member.name, data))
    with tarfile.open(target, "w") as out:
        for key, files in groups.items():
            meta = json.loads(next(data for name, data in files if name.endswith(".json")))
            caption = caption_of(key, meta)
            if caption is not None:
                files = files + [(f"{key}.txt", caption.encode("utf-8"))]
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return target
