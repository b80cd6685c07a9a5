"""`data build --captions FILE`: one caption per source video, stored as each of its clips' `txt` member.

The file is JSONL (one object per line: {"source": PATH or "id": ID, "text": CAPTION}) or CSV with a header
naming `source` or `id`, and `text`. `source` is the video's path, relative to --src (a folder, or the list
file's folder) or absolute; `id` is the video's file name without extension (or the source name a build
gives it, `identity__stem__hash`, for stems that repeat). A source without an entry gets no caption (its clips
train on the null text); an entry that names no source is reported, never dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from data_tools.sources import Source
from lit_avatar.errors import UserError

KEYS = ("source", "id")


@dataclass(frozen=True)
class Caption:
    """One line of the captions file: which source (`kind` "source" or "id", `key`) gets `text`."""

    kind: str
    key: str
    text: str
    line: int


def _entry(path: Path, number: int, row: dict, shown: str) -> Caption:
    kinds = [k for k in KEYS if row.get(k) not in (None, "")]
    text = row.get("text")
    if len(kinds) != 1 or not isinstance(text, str) or not isinstance(row[kinds[0]], str):
        raise UserError(f"{path}:{number}: expected one of \"source\" or \"id\" and a \"text\", all strings; "
                        f"got {shown[:80]!r}")
    return Caption(kinds[0], row[kinds[0]], text, number)


def _read_jsonl(path: Path, lines: list[str]) -> list[Caption]:
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line, got {line.strip()[:80]!r}")
        entries.append(_entry(path, number, row, line.strip()))
    return entries


def _read_csv(path: Path, lines: list[str]) -> list[Caption]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or "text" not in header or not any(k in header for k in KEYS):
        raise UserError(f"{path}:1: expected a CSV header with source or id, and text; got {header!r}")
    entries = []
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}:{number}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        entries.append(_entry(path, number, dict(zip(header, row)), ",".join(row)))
    return entries


def read_captions(path: str) -> list[Caption]:
    """The entries of a captions file (.jsonl/.json lines or .csv; other names: JSONL if it starts with `{`).

    Raises:
        UserError: the file is missing, not UTF-8, or a line is malformed (names the file and line).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--captions {path}: not found (expected a JSONL or CSV file of captions)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--captions {path}: unreadable as UTF-8 text ({err})") from None
    lines = text.splitlines()
    jsonl = file.suffix.lower() in (".jsonl", ".json") or (
        file.suffix.lower() != ".csv" and text.lstrip().startswith("{"))
    return _read_jsonl(file, lines) if jsonl else _read_csv(file, lines)


def _base(src: str) -> Path:
    root = Path(src)
    return root if root.is_dir() else root.parent


def _lookup(sources: list[Source], src: str) -> tuple[dict[str, int], dict[str, list[int]]]:
    by_path = {str(Path(s.path).resolve()): i for i, s in enumerate(sources)}
    by_id: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_id.setdefault(Path(s.path).stem, []).append(i)
        by_id.setdefault(s.name, []).append(i)
    return by_path, by_id


def attach_captions(sources: list[Source], entries: list[Caption], src: str,
                    path: str) -> tuple[list[Source], list[Caption]]:
    """The sources with their captions, and the entries that name no source.

    Raises:
        UserError: an `id` that names several sources, or two entries for one source (names the lines).
    """
    by_path, by_id = _lookup(sources, src)
    base = _base(src)
    captions: dict[int, Caption] = {}
    unknown = []
    for entry in entries:
        if entry.kind == "source":
            key = Path(entry.key)
            found = [by_path[str(k.resolve())] for k in ((key,) if key.is_absolute() else (base / key,))
                     if str(k.resolve()) in by_path]
        else:
            found = by_id.get(entry.key, [])
        if len(found) > 1:
            raise UserError(f"{path}:{entry.line}: id {entry.key!r} names {len(found)} videos (e.g. "
                            f"{sources[found[0]].path}, {sources[found[1]].path}); expected one: give its source path")
        if not found:
            unknown.append(entry)
            continue
        if found[0] in captions:
            raise UserError(f"{path}:{entry.line}: {sources[found[0]].path} already has a caption (line "
                            f"{captions[found[0]].line}); expected one caption per video")
        captions[found[0]] = entry
    out = [replace(s, caption=captions[i].text) if i in captions else s for i, s in enumerate(sources)]
    return out, unknown


def captions_summary(path: str, sources: list[Source], unknown: list[Caption]) -> dict:
    """What a build records of its captions (in its plan and manifest): the file, a digest of every source's
    caption (a changed caption must not resume an old build), counts and the entries that named no source."""
    digest = hashlib.sha256(json.dumps([(s.name, s.caption) for s in sources]).encode("utf-8")).hexdigest()
    return {"file": str(path), "sha256": digest, "sources_captioned": sum(s.caption is not None for s in sources),
            "sources": len(sources), "unknown": [{"line": e.line, e.kind: e.key} for e in unknown]}
