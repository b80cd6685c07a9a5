"""`data build --captions FILE` (JSONL or CSV: source path or id -> text) and `data precompute` (every unique
caption of the shards into the prompt cache, so training never loads umT5)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from data_tools.build import build
from data_tools.captions import attach_captions, read_captions
from data_tools.sources import scan_sources
from data_tools.toy_sources import write_talking_video
from lit_avatar.errors import UserError


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Three speakers, one 1.2 s video each (one 1-second clip)."""
    root = tmp_path_factory.mktemp("caption_src") / "src"
    for seed, name in enumerate(("alice/talk.mp4", "bob/hello.mp4", "carol/quiet_talk.mp4")):
        write_talking_video(root / name, 1.2, fps=25, width=48, height=48, seed=seed)
    return root


def _args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["--src", str(src), "--out", str(out), "--size", "32", "--clip-seconds", "1", "--no-face",
            "--val-fraction", "0", "--no-progress", *extra]


def _captions_in(out: Path) -> dict[str, str | None]:
    """Per sample key: its `txt` member, or None."""
    found: dict[str, str | None] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                found.setdefault(key, None)
                if ext == "txt":
                    found[key] = tar.extractfile(member).read().decode("utf-8")
    return found


def test_jsonl_and_csv_name_sources_by_path_or_id(src, tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"source": "alice/talk.mp4", "text": "a woman talking"}) + "\n\n"
                     + json.dumps({"id": "hello", "text": "a man, smiling"}) + "\n"
                     + json.dumps({"id": "zed", "text": "nobody"}) + "\n")
    sources, unknown = attach_captions(scan_sources(str(src)), read_captions(str(jsonl)), str(src), str(jsonl))
    assert {Path(s.path).stem: s.caption for s in sources} == {"talk": "a woman talking", "hello": "a man, smiling",
                                                                "quiet_talk": None}
    assert [(u.line, u.kind, u.key) for u in unknown] == [(4, "id", "zed")]
    table = tmp_path / "c.csv"
    table.write_text(f'source,text\n{src / "carol/quiet_talk.mp4"},"quiet, calm"\n')
    sources, unknown = attach_captions(scan_sources(str(src)), read_captions(str(table)), str(src), str(table))
    assert [s.caption for s in sources] == [None, None, "quiet, calm"] and unknown == []


@pytest.mark.parametrize("name, text, message", [
    ("bad.jsonl", '{"id": "talk", "text": "ok"}\n{"id": "hello", "text": 3}\n',
     r'bad.jsonl:2: expected one of "source" or "id" and a "text", all strings'),
    ("bad.jsonl", '{"id": "talk", "text": "ok"}\nnot json\n', r"bad.jsonl:2: expected a JSON object per line"),
    ("both.jsonl", '{"id": "talk", "source": "alice/talk.mp4", "text": "x"}\n', r"both.jsonl:1: expected one of"),
    ("bad.csv", "name,text\nalice,x\n", r"bad.csv:1: expected a CSV header with source or id, and text"),
    ("bad.csv", 'id,text\ntalk,"a, b"\nhello,x,y\n', r"bad.csv:3: expected 2 fields \(id,text\), got 3"),
    ("twice.csv", "source,id,text\nalice/talk.mp4,,x\n,talk,y\n",
     r"twice.csv:3: .*alice/talk.mp4 already has a caption \(line 2\); expected one caption per video"),
])
def test_a_malformed_captions_file_is_one_line_naming_file_and_line(src, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        attach_captions(scan_sources(str(src)), read_captions(str(path)), str(src), str(path))


def test_an_id_naming_two_videos_is_refused(src, tmp_path):
    twin = tmp_path / "src2"
    for seed, name in enumerate(("alice/talk.mp4", "bob/talk.mp4")):
        write_talking_video(twin / name, 0.5, fps=25, width=32, height=32, seed=seed)
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "talk", "text": "x"}\n')
    with pytest.raises(UserError, match=r"c.jsonl:1: id 'talk' names 2 videos .* give its source path"):
        attach_captions(scan_sources(str(twin)), read_captions(str(path)), str(twin), str(path))


def test_build_stores_captions_reports_unknown_sources_and_precompute_fills_the_cache(src, tmp_path, capsys,
                                                                                     tiny_text_encoder):
    from data_tools.prompt_cache import precompute_prompts
    from lit_avatar.prompts import PromptEncoder

    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"source": "alice/talk.mp4", "text": "a woman talking"}\n'
                        '{"id": "hello", "text": "a man smiling"}\n{"source": "zed/gone.mp4", "text": "nobody"}\n')
    plain = build(_args(src, tmp_path / "plain"))
    manifest = build(_args(src, tmp_path / "out", "--captions", str(captions)))
    err = capsys.readouterr().err
    assert "1 entries name no video under --src (first: line 3, source 'zed/gone.mp4')" in err
    assert manifest["captions"]["unknown"] == [{"line": 3, "source": "zed/gone.mp4"}]
    assert manifest["captions"]["sources_captioned"] == 2 and "captions" not in plain
    found = _captions_in(tmp_path / "out")
    assert [found[key] for key in sorted(found)] == ["a woman talking", "a man smiling", None]  # alice, bob, carol
    assert all(v is None for v in _captions_in(tmp_path / "plain").values())
    # the same command resumes; changed captions do not resume an old build
    build(_args(src, tmp_path / "out", "--captions", str(captions)))
    captions.write_text('{"id": "hello", "text": "a man frowning"}\n')
    with pytest.raises(UserError, match="holds a build made with other options or sources"):
        build(_args(src, tmp_path / "out", "--captions", str(captions)))
    shards = str(tmp_path / "out" / "train-*.tar")
    args = ["--shards", shards, "--text-encoder", str(tiny_text_encoder), "--max-length", "8",
            "--cache-dir", str(tmp_path / "cache")]
    first = precompute_prompts(args)
    assert (first["captions"], first["unique"], first["encoded"], first["cached_before"]) == (2, 2, 2, 0)
    assert precompute_prompts(args)["encoded"] == 0
    training = PromptEncoder(str(tiny_text_encoder), max_length=8, cache_dir=str(tmp_path / "cache"))
    assert training(["a woman talking", "a man smiling"]).shape == (2, 8, 16)
    assert training.encoded == 0 and training._network is None  # umT5 never loaded
