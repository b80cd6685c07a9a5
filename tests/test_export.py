"""`lit-avatar data export`: shard samples -> real/KEY.mp4 + KEY.json, refs/KEY.png, audio/KEY.wav for eval."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from lit_avatar.errors import UserError


def _metas(shard) -> dict[str, dict]:
    with tarfile.open(shard) as tar:
        return {m.name.split(".", 1)[0]: json.loads(tar.extractfile(m).read())
                for m in tar.getmembers() if m.name.endswith(".json")}


def test_export_val_split_for_eval(synth_shards, tmp_path, capsys):
    from data_tools.cli import main
    from eval.inputs import load_audio_for, load_reference, match_videos, read_sidecar
    from eval.synthsync import synthsync
    from lit_avatar.data.media import probe, read_audio, read_video

    out = tmp_path / "synthtalk_eval"
    assert main(["export", "--shards", str(synth_shards / "val-*.tar"), "--out", str(out)]) == 0
    assert "exported 2 clips" in capsys.readouterr().out
    metas = _metas(synth_shards / "val-000000.tar")
    matching = match_videos(out / "real", out / "real")  # as the ground-truth row of the tables runs it
    assert matching.matched == sorted(metas)
    for key, meta in metas.items():
        video = out / "real" / f"{key}.mp4"
        info = probe(video)
        assert info["has_audio"] and info["width"] == 32 and abs(info["duration"] - 1.0) < 0.1
        sidecar = read_sidecar(video)
        assert sidecar["mouth_box"] == meta["mouth_box"] and "face_box" not in sidecar  # null: no face box
        assert sidecar["identity"] == meta["identity"] and sidecar["fps"] == 25.0
        wav = read_audio(out / "audio" / f"{key}.wav")
        assert wav.dtype == np.float32 and len(wav) == 16000
        np.testing.assert_allclose(load_audio_for(key, video, out / "audio"), wav)
        ref = load_reference(key, out / "refs")
        assert ref.shape == (32, 32, 3)
        frames, fps = read_video(video)
        assert len(frames) == 25 and not any(np.array_equal(ref, f) for f in frames)  # another time
        assert synthsync(frames, sidecar["mouth_box"], wav, fps=fps)["r"] > 0.8
    assert not [p for p in out.rglob(".*")]  # no temp files left behind


def test_export_limit_seconds_and_errors(synth_shards, tmp_path):
    from data_tools.export import export_shards, normalised_face_box
    from lit_avatar.data.media import probe, read_audio

    summary = export_shards(str(synth_shards / "train-*.tar"), tmp_path, limit=3, seconds=0.6)
    assert len(summary["exported"]) == 3 and not summary["skipped"]
    for key in summary["exported"]:
        assert probe(tmp_path / "real" / f"{key}.mp4")["has_audio"]
        assert len(read_audio(tmp_path / "audio" / f"{key}.wav")) == 15 * 640
        assert json.loads((tmp_path / "real" / f"{key}.json").read_text())["num_frames"] == 15
    assert len(list((tmp_path / "refs").glob("*.png"))) == 3
    with pytest.raises(UserError, match=r"^--shards: glob .*nothing-\*\.tar.* matches no files$"):
        export_shards(str(synth_shards / "nothing-*.tar"), tmp_path / "x")
    with pytest.raises(UserError, match="--seconds 0"):
        export_shards(str(synth_shards / "val-*.tar"), tmp_path / "x", seconds=0)
    # `data build` stores the face box in source pixels with its square crop [x0, y0, side]
    assert normalised_face_box({"face_box": [150, 60, 250, 180], "crop": [100, 40, 200]}) == [0.25, 0.1, 0.75, 0.7]
    assert normalised_face_box({"face_box": [150, 60, 250, 180]}) is None
