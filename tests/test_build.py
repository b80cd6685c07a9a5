"""`lit-avatar data build`: raw videos of mixed rates, containers and faults become readable shards.

The inputs are written here with PyAV (tiny talking-head-like clips) and the face detector is a toy
ONNX model built with the onnx helper API (data_tools.toy_sources), so nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.build import build, main
from data_tools.faces import Crop, OnnxFaceDetector, decode_scrfd, nms, stable_crop
from data_tools.sources import plan_jobs, scan_sources, split_of
from data_tools.toy_sources import talking_frames, write_talking_video, write_toy_detector
from lit_avatar.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SECONDS = 2.2  # two 1-second clips per good file, a 0.2 s tail dropped


def _tar_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """Good files at 25/30/24 fps in mp4/mkv/mov, portrait and landscape, plus one of each fault."""
    root = tmp_path_factory.mktemp("raw")
    src = root / "src"
    good = {
        "alice/talk25.mp4": dict(fps=25, width=64, height=48),
        "alice/talk30.mkv": dict(fps=30, width=64, height=48, seed=1),
        "bob/portrait24.mov": dict(fps=24, width=48, height=64, seed=2),
        "erin/talk25.mp4": dict(fps=25, width=64, height=48, seed=3),
    }
    bad = {
        "bob/noaudio.mp4": (dict(fps=25, width=64, height=48, audio=False), "no_audio"),
        "carol/silent.mp4": (dict(fps=25, width=64, height=48, audio_level=0.0), "silent"),
        "carol/tiny_face.mp4": (dict(fps=25, width=64, height=48, face_frac=0.15), "face_too_small"),
        "dave/short.mp4": (dict(fps=25, width=64, height=48, seconds=0.6), "too_short"),
        "dave/cut.mkv": (dict(fps=25, width=64, height=48), "truncated"),
        "dave/cut.mp4": (dict(fps=25, width=64, height=48), "broken"),
    }
    for name, kw in good.items():
        write_talking_video(src / name, SECONDS, **kw)
    for name, (kw, _) in bad.items():
        kw = dict(kw)
        write_talking_video(src / name, kw.pop("seconds", SECONDS), **kw)
    for name in ("dave/cut.mkv", "dave/cut.mp4"):  # a download that stopped half-way
        data = (src / name).read_bytes()
        (src / name).write_bytes(data[: len(data) // 2])
    (src / "notes.txt").write_text("not a video")
    detector = write_toy_detector(root / "det.onnx")
    return {"root": root, "src": src, "good": good, "bad": {k: v[1] for k, v in bad.items()}, "detector": detector}


def _args(raw: dict, out: Path, *extra: str) -> list[str]:
    return ["--src", str(raw["src"]), "--out", str(out), "--size", "32", "--clip-seconds", "1",
            "--face-detector", str(raw["detector"]), "--min-face-px", "12", "--sources-per-job", "2",
            "--val-fraction", "0.3", "--seed", "8", "--no-progress", *extra]


def test_sources_split_and_plan(tmp_path, raw):
    sources = scan_sources(str(raw["src"]))
    assert len(sources) == 10 and [s.identity for s in sources] == sorted(s.identity for s in sources)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\nspeaker7\t{raw['src'] / 'alice/talk25.mp4'}\n{raw['src'] / 'bob/noaudio.mp4'}\n")
    listed = scan_sources(str(listing))
    assert [s.identity for s in listed] == ["bob", "speaker7"]
    # the split follows the identity only, and is stable
    assert split_of("alice", 0.3, 3) == split_of("alice", 0.3, 3)
    assert {split_of(f"id{i}", 0.0, 0) for i in range(50)} == {"train"}
    assert {split_of(f"id{i}", 1.0, 0) for i in range(50)} == {"val"}
    share = np.mean([split_of(f"id{i}", 0.25, 1) == "val" for i in range(2000)])
    assert 0.2 < share < 0.3
    jobs = plan_jobs(sources, 0.3, 3, 3)
    assert sum(len(j.sources) for j in jobs) == 10 and all(len(j.sources) <= 3 for j in jobs)
    assert all(split_of(s.identity, 0.3, 3) == j.split for j in jobs for s in j.sources)


def test_face_detector_and_crop(raw):
    detector = OnnxFaceDetector(str(raw["detector"]))
    assert detector.kind == "boxes" and detector.input_hw == (64, 64)
    frame = talking_frames(1, 48, 96, face_frac=0.5)[0]  # portrait, letterboxed into 64x64
    box = detector.detect(frame)
    skin = np.argwhere(frame[..., 0] > 160)
    (y0, x0), (y1, x1) = skin.min(0), skin.max(0) + 1
    assert box.shape == (1, 5) and np.allclose(box[0, :4], [x0, y0, x1, y1], atol=2.5)
    assert len(detector.detect(np.zeros((48, 64, 3), np.uint8))) == 0
    # one crop per clip: the median centre ignores one odd box; the side covers the largest face
    boxes = [np.array([40, 40, 60, 60.0])] * 4 + [np.array([0, 0, 10, 10.0]), None]
    crop = stable_crop(boxes, 200, 100, margin=0.5)
    assert crop.side == 40 and (crop.x0, crop.y0) == (30, 30)
    edge = stable_crop([np.array([180, 80, 200, 100.0])], 200, 100, margin=0.5)
    assert edge.x0 + edge.side <= 200 and edge.y0 + edge.side <= 100
    mouth = crop.mouth_box()
    assert 0 <= mouth[0] < mouth[2] <= 1 and 0.5 < mouth[1] < mouth[3] <= 1
    assert Crop(0, 0, 10).mouth_box() == (0.35, 0.6, 0.65, 0.85)


def test_scrfd_decoding_and_nms():
    # one stride-8 anchor at cell (row 2, col 3), second anchor of the cell, distances (1, 2, 3, 4) strides
    hw = (32, 32)
    outputs = []
    for stride in (8, 16, 32):
        cells = (32 // stride) ** 2
        outputs.append(np.zeros((cells * 2, 1), np.float32))
    boxes = [np.zeros((len(o), 4), np.float32) for o in outputs]
    index = (2 * 4 + 3) * 2 + 1
    outputs[0][index] = 0.9
    boxes[0][index] = [1, 2, 3, 4]
    found, marks = decode_scrfd(outputs + boxes, hw, 0.5)
    assert marks is None  # 6 outputs: no landmark maps
    cx, cy = 3 * 8, 2 * 8
    assert np.allclose(found, [[cx - 8, cy - 16, cx + 24, cy + 32, 0.9]])
    kept = nms(np.array([[0, 0, 10, 10, 0.9], [1, 1, 10, 10, 0.8], [20, 20, 30, 30, 0.7]], np.float32), 0.4)
    assert kept.tolist() == [0, 2]


def test_build_mixed_sources(tmp_path, raw):
    out = tmp_path / "out"
    manifest = build(_args(raw, out, "--shard-max-mb", "0.06"))
    counts = manifest["counts"]
    # shards are bounded: a part over the bound holds a single (larger) sample; jobs roll over to new parts
    for shard in manifest["shards"]:
        assert (out / shard["file"]).stat().st_size == shard["bytes"]
        assert shard["bytes"] <= 0.06 * 2**20 or shard["samples"] == 1
    assert any(shard["file"].endswith("-01.tar") for shard in manifest["shards"])
    # every bad file is rejected with its reason; every good file gives its 2 clips
    rejected = {Path(r["file"]).relative_to(raw["src"]).as_posix(): r["reason"] for r in manifest["rejected_files"]}
    assert rejected == raw["bad"]
    assert counts["files"] == 10 and counts["files_used"] == 4 and counts["files_rejected"] == 6
    assert counts["clips"] == 2 * len(raw["good"])
    assert counts["files_used"] + counts["files_rejected"] == counts["files"]
    assert counts["clips_rejected"] == 4  # silent and tiny-face files: 2 clips each
    assert sum(counts["files_rejected_by_reason"].values()) == counts["files_rejected"]
    assert sum(s["clips"] for s in manifest["splits"].values()) == counts["clips"]
    assert sum(s["samples"] for s in manifest["shards"]) == counts["clips"]
    assert counts["hours"] == pytest.approx(counts["clips"] / 3600)
    for split, info in manifest["splits"].items():  # identities never straddle the split
        assert all(split_of(identity, 0.3, 8) == split for identity in info["identities"])
    assert not list(out.glob(".*tmp*"))

    from lit_avatar.data.datamodule import AvatarDataModule

    train = sorted(str(p) for p in out.glob("train-*.tar"))
    val = sorted(str(p) for p in out.glob("val-*.tar"))
    assert train and val  # seed 8 puts alice (and carol) in val
    dm = AvatarDataModule(train_shards=train, val_shards=train + val, batch_size=2, clip_frames=25, num_workers=0)
    dm.setup("fit")
    keys = []
    for batch in dm.val_dataloader():
        assert batch["video"].shape[1:] == (3, 25, 32, 32) and batch["audio"].shape[1] == 25 * 640
        assert batch["ref"].shape[1:] == (3, 32, 32)
        assert float(batch["video"].min()) >= -1 and float(batch["video"].max()) <= 1
        assert (batch["mouth_box"][:, 2] > batch["mouth_box"][:, 0]).all()
        keys += batch["meta"]["key"]
        # audio survived: the good files all speak
        assert (batch["audio"].pow(2).mean(1).sqrt() > 0.01).all()
    assert len(keys) == counts["clips"] == len(set(keys))
    first = next(iter(dm.train_dataloader()))
    assert first["video"].shape == (2, 3, 25, 32, 32)
    # the face is centred in the crop: skin fills the centre pixel of every frame
    video = (first["video"] + 1) * 127.5
    assert (video[:, 0, :, 16, 16] > 150).float().mean() > 0.9


# A build that dies like a killed process (no cleanup, no flush) once its third sample is in a shard.
KILLED_BUILD = """
import os, sys
from data_tools.build import main
from data_tools.shards import ShardSink

write, written = ShardSink.write, []

def write_then_die(self, sample):
    write(self, sample)
    written.append(sample["__key__"])
    if len(written) == 3:
        os._exit(77)

ShardSink.write = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_kill_and_resume_gives_the_same_shards(tmp_path, raw):
    # 128 px: x264 output is byte-reproducible at this size (tiny frames are not always)
    args = ["--size", "128", "--sources-per-job", "1"]
    whole = tmp_path / "whole"
    build(_args(raw, whole, *args, "--workers", "2"))  # spawned workers; the result must not depend on them
    broken = tmp_path / "resumed"
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, *_args(raw, broken, *args)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 77, killed.stderr[-2000:]
    assert not (broken / "manifest.json").exists()
    assert list(broken.glob(".*.tar.*.tmp")), "the kill should leave a half-written shard behind"
    assert len(list(broken.glob("*.done.json"))) < len(list(whole.glob("*.done.json")))
    build(_args(raw, broken, *args))
    assert _tar_hashes(broken) == _tar_hashes(whole) and len(_tar_hashes(whole)) >= 4
    assert not list(broken.glob(".*tmp*"))
    resumed = json.loads((broken / "manifest.json").read_text())
    assert resumed["counts"] == json.loads((whole / "manifest.json").read_text())["counts"]
    # a third run has nothing left to do and changes nothing
    build(_args(raw, broken, *args))
    assert _tar_hashes(broken) == _tar_hashes(whole)
    with pytest.raises(UserError, match="--out"):
        build(_args(raw, broken, "--size", "64", "--sources-per-job", "1"))


def test_precomputed_keys_match_encoding_on_the_fly(tmp_path, raw):
    import torch

    from data_tools.precompute import make_audio_encoder, make_vae
    from lit_avatar.data.datamodule import AvatarDataModule

    src = tmp_path / "src"
    for name in ("alice/talk25.mp4", "bob/portrait24.mov"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((raw["src"] / name).read_bytes())
    out = tmp_path / "out"
    argv = ["--src", str(src), "--out", str(out), "--size", "32", "--clip-seconds", "1", "--no-face",
            "--val-fraction", "0", "--precompute-latents", "patch:2", "--precompute-audio", "mel", "--no-progress"]
    assert main(argv) == 0
    shards = sorted(str(p) for p in out.glob("train-*.tar"))
    batches = {}
    for precomputed in (False, True):
        dm = AvatarDataModule(train_shards=shards, val_shards=shards, batch_size=4, clip_frames=25,
                              use_precomputed=precomputed)
        batches[precomputed] = next(iter(dm.val_dataloader()))
    raw_batch, pre = batches[False], batches[True]
    assert raw_batch["meta"]["key"] == pre["meta"]["key"] and len(pre["meta"]["key"]) == 4
    assert "video" not in pre and "audio" not in pre and "ref" not in pre
    vae, audio_encoder = make_vae("patch:2"), make_audio_encoder("mel")
    with torch.no_grad():
        latents = vae.encode(raw_batch["video"])
        ref_latent = vae.encode(raw_batch["ref"][:, :, None])
        feats = audio_encoder(raw_batch["audio"], 25)
    assert pre["latents"].shape == latents.shape == (4, 12, 25, 16, 16)
    assert pre["ref_latent"].shape == ref_latent.shape
    assert pre["audio_feats"].shape == feats.shape
    for got, want in ((pre["latents"], latents), (pre["ref_latent"], ref_latent), (pre["audio_feats"], feats)):
        torch.testing.assert_close(got, want, atol=2e-3 * (1 + float(want.abs().max())), rtol=1e-3)
    torch.testing.assert_close(pre["mouth_box"], raw_batch["mouth_box"])


def test_user_errors_are_one_line(tmp_path, raw, capsys):
    from lit_avatar.cli import main as cli_main

    cases = [
        (["--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--no-face"], "--src"),
        (["--src", str(raw["src"]), "--out", str(tmp_path / "o"), "--no-face", "--face-detector", str(raw["detector"])],
         "--face-detector"),
        (["--src", str(raw["src"]), "--out", str(tmp_path / "o"), "--no-face", "--size", "33"], "--size"),
        (["--src", str(raw["src"]), "--out", str(tmp_path / "o"), "--face-detector", str(raw["src"] / "notes.txt")],
         "--face-detector"),
        (["--src", str(raw["src"]), "--out", str(tmp_path / "o"), "--no-face", "--precompute-latents", "patch:x"],
         "--precompute-latents"),
    ]
    for argv, name in cases:
        assert cli_main(["data", "build", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and name in err and "\n" not in err, err
