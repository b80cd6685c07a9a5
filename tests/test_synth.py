"""SynthTalk: the ground truth must really match the pixels and the sound, and sets must be reproducible."""
import json
import tarfile

import numpy as np
import pytest

from data_tools.synth import make_clip, write_synthtalk
from data_tools.synth_face import box_inside_face, sample_identity
from lit_avatar.data.schema import decode_sample
from lit_avatar.errors import UserError


def _read_samples(path):
    """Group tar members by key, as webdataset does, without webdataset."""
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return [decode_sample(raw) for raw in samples.values()]


def _frame_rms(audio: np.ndarray, num_frames: int) -> np.ndarray:
    return np.sqrt((audio[: num_frames * 640].astype(np.float64).reshape(num_frames, 640) ** 2).mean(axis=1))


def _dark_fraction(frames: np.ndarray, box) -> np.ndarray:
    """Share of box pixels darker than halfway between the box's skin level and the mouth's."""
    size = frames.shape[1]
    x0, y0, x1, y1 = (int(round(v * size)) for v in box)
    luma = frames[:, y0:y1, x0:x1].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    skin = np.percentile(luma, 90)
    mouth = np.percentile(luma, 1)
    return (luma < 0.5 * (skin + mouth)).mean(axis=(1, 2))


def test_layout_manifest_and_split(synth_shards):
    manifest = json.loads((synth_shards / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar"]
    assert manifest["splits"]["val"]["shards"] == ["val-000000.tar"]
    train_ids = set(manifest["splits"]["train"]["identities"])
    val_ids = set(manifest["splits"]["val"]["identities"])
    assert len(train_ids) == 4 and len(val_ids) == 1 and not train_ids & val_ids
    samples = [s for name in ("train-000000.tar", "train-000001.tar") for s in _read_samples(synth_shards / name)]
    assert len(samples) == 8 and {s["meta"]["identity"] for s in samples} == train_ids
    val = _read_samples(synth_shards / "val-000000.tar")
    assert len(val) == 2 and {s["meta"]["identity"] for s in val} == val_ids
    for sample in samples:
        assert sample["video"].shape == (25, 32, 32, 3) and sample["ref"].shape == (32, 32, 3)
        assert sample["audio"].shape == (16000,)  # from the lossless flac, exact length
        assert len(sample["meta"]["mouth"]) == 25 and sample["meta"]["fps"] == 25.0


def test_ground_truth_opening_follows_audio_and_pixels(synth_shards):
    """The acceptance figures of SynthTalk, measured on decoded shards (what training sees)."""
    samples = _read_samples(synth_shards / "train-000000.tar")
    opening = np.concatenate([s["meta"]["mouth"] for s in samples])
    envelope = np.concatenate([_frame_rms(s["audio"], 25) for s in samples])
    dark = np.concatenate([_dark_fraction(s["video"], s["meta"]["mouth_box"]) for s in samples])
    assert np.corrcoef(opening, envelope)[0, 1] > 0.9
    assert np.corrcoef(opening, dark)[0, 1] > 0.9
    assert opening.min() < 0.05 and opening.max() > 0.5  # pauses close the mouth, syllables open it


def test_long_clip_correlations_and_mouth_darkness():
    clip = make_clip(seed=7, clip_index=3, identity_index=2, seconds=8.0, size=48)
    rms = _frame_rms(clip.audio, 200)
    assert np.corrcoef(clip.opening, rms)[0, 1] > 0.95
    assert np.corrcoef(clip.opening, _dark_fraction(clip.frames, clip.box))[0, 1] > 0.95
    # the open mouth's interior is far darker than the skin around it
    x0, y0, x1, y1 = (int(round(v * 48)) for v in clip.box)
    luma = clip.frames[np.argmax(clip.opening), y0:y1, x0:x1] @ np.array([0.299, 0.587, 0.114])
    assert luma.min() < 0.5 * np.percentile(luma, 90)


def test_reference_is_same_identity_other_time():
    clip = make_clip(seed=3, clip_index=0, identity_index=0, seconds=1.0, size=32)
    other = make_clip(seed=3, clip_index=1, identity_index=1, seconds=1.0, size=32)
    frames = clip.frames.astype(np.float64)
    ref = clip.ref.astype(np.float64)
    assert np.abs(frames - ref).mean(axis=(1, 2, 3)).min() > 0.0  # not one of the clip's frames
    own = np.abs(frames - ref).mean()
    stranger = np.abs(other.frames.astype(np.float64) - ref).mean()
    assert own < 0.5 * stranger


def test_mouth_box_inside_face_for_many_identities():
    rng = np.random.default_rng(0)
    for size in (24, 32, 64):
        for _ in range(50):
            identity = sample_identity(rng, size)
            assert box_inside_face(identity, size)


def test_reproducible(tmp_path):
    a = write_synthtalk(tmp_path / "a", clips=2, seconds=0.4, shards=1, size=24, seed=5)
    b = write_synthtalk(tmp_path / "b", clips=2, seconds=0.4, shards=1, size=24, seed=5)
    assert a["splits"] == b["splits"]
    first, second = make_clip(5, 1, 1, 0.4, 24), make_clip(5, 1, 1, 0.4, 24)
    assert np.array_equal(first.frames, second.frames) and np.array_equal(first.audio, second.audio)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 33}, "--size 33"),
    ({"clips": 0}, "--clips 0"),
    ({"val_identities": 3, "identities": 3}, "--identities 3"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"clips": 4, "seconds": 0.4, "shards": 1, "size": 24, "seed": 0, **kwargs}
    with pytest.raises(UserError, match=message):
        write_synthtalk(tmp_path, **args)


def test_cli_synth_and_missing_build(tmp_path, capsys):
    from data_tools.cli import main

    assert main(["synth", "--out", str(tmp_path / "s"), "--clips", "2", "--seconds", "0.4", "--shards", "1",
                 "--size", "24"]) == 0
    assert (tmp_path / "s" / "train-000000.tar").is_file()
    assert "train: 2 clips" in capsys.readouterr().out
    with pytest.raises(UserError, match="lit-avatar data 'nope': unknown command"):
        main(["nope"])
