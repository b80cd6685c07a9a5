"""AvatarDataModule on real SynthTalk shards: the batch contract, alignment, references, bad data, workers."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from lit_avatar.data.schema import SampleError, decode_sample, encode_sample
from lit_avatar.data.shards import expand_shards
from lit_avatar.data.stream import ClipStream, SampleCounters
from lit_avatar.errors import UserError


def _raw_samples(path) -> dict[str, dict]:
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return samples


def _write_tar(path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _stream(shards, counters=None, **kwargs) -> ClipStream:
    args = dict(clip_frames=20, size=None, batch_size=2, counters=counters or SampleCounters(0), train=True,
                shuffle_buffer=4, seed=0)
    args.update(kwargs)
    return ClipStream(shards, **args)


def _all(loader) -> list[dict]:
    return list(loader)


def _keys(batches) -> list[str]:
    return [key for batch in batches for key in batch["meta"]["key"]]


@pytest.fixture(scope="module")
def decoded_train(synth_shards):
    """Full decoded train samples by key (ground truth to check the clips against)."""
    out = {}
    for name in ("train-000000.tar", "train-000001.tar"):
        out.update({k: decode_sample(raw) for k, raw in _raw_samples(synth_shards / name).items()})
    return out


def test_batch_contract_and_alignment(synth_shards, decoded_train):
    from lit_avatar.data.datamodule import AvatarDataModule

    data = AvatarDataModule(str(synth_shards / "train-*.tar"), str(synth_shards / "val-*.tar"), batch_size=2,
                            clip_frames=20, seed=3)
    data.setup("fit")
    batches = _all(data.train_dataloader())
    assert sorted(_keys(batches)) == sorted(decoded_train)  # one pass sees every clip once
    starts = set()
    for batch in batches:
        assert batch["video"].shape == (2, 3, 20, 32, 32) and batch["video"].dtype == torch.float32
        assert -1.0 <= batch["video"].min() and batch["video"].max() <= 1.0
        assert batch["audio"].shape == (2, 20 * 640) and batch["audio"].dtype == torch.float32
        assert batch["ref"].shape == (2, 3, 32, 32) and batch["mouth_box"].shape == (2, 4)
        assert batch["mouth"].shape == (2, 20)
        assert set(batch["meta"]) == {"key", "identity", "source", "fps"} and batch["meta"]["fps"] == [25.0] * 2
        for i, key in enumerate(batch["meta"]["key"]):
            full = decoded_train[key]
            frames = (batch["video"][i].permute(1, 2, 3, 0).numpy() + 1) * 127.5
            # locate the window in the full clip; audio and mouth must come from the same start
            errors = [np.abs(full["video"][s:s + 20] - frames).mean() for s in range(len(full["video"]) - 19)]
            start = int(np.argmin(errors))
            assert errors[start] < 0.01
            starts.add(start)
            np.testing.assert_array_equal(batch["audio"][i].numpy(), full["audio"][start * 640:(start + 20) * 640])
            np.testing.assert_allclose(batch["mouth"][i].numpy(), full["meta"]["mouth"][start:start + 20], atol=1e-6)
            np.testing.assert_allclose(batch["mouth_box"][i].numpy(), full["meta"]["mouth_box"], atol=1e-6)
    assert len(starts) > 1  # training clips start at random frames


def test_reference_same_identity_other_time(synth_shards, decoded_train):
    batches = _all(_stream([str(p) for p in sorted(synth_shards.glob("train-*.tar"))], clip_frames=25))
    by_identity: dict[str, list[np.ndarray]] = {}
    for sample in decoded_train.values():
        by_identity.setdefault(sample["meta"]["identity"], []).append(sample["video"].astype(np.float64))
    for batch in batches:
        for i, identity in enumerate(batch["meta"]["identity"]):
            ref = (batch["ref"][i].permute(1, 2, 0).numpy() + 1) * 127.5
            own_clip = decoded_train[batch["meta"]["key"][i]]["video"].astype(np.float64)
            assert np.abs(own_clip - ref).mean(axis=(1, 2, 3)).min() > 0.5  # not a frame of the clip
            distance = {who: min(np.abs(v - ref).mean() for v in videos) for who, videos in by_identity.items()}
            assert min(distance, key=distance.get) == identity


def test_corrupt_member_and_truncated_shard_are_skipped_and_counted(synth_shards, tmp_path):
    raw = list(_raw_samples(synth_shards / "train-000000.tar").values())
    raw[1] = dict(raw[1], mp4=b"\x00garbage" * 50)
    raw[2] = dict(raw[2], json=b"{not json")
    _write_tar(tmp_path / "bad-0.tar", raw)
    good = (synth_shards / "train-000001.tar").read_bytes()
    (tmp_path / "bad-1.tar").write_bytes(good[: len(good) // 2])  # cut mid-shard
    counters = SampleCounters(0)
    shards = [str(tmp_path / "bad-0.tar"), str(tmp_path / "bad-1.tar")]
    batches = _all(_stream(shards, counters, batch_size=1))
    totals = counters.totals()
    assert totals["skipped_samples"] == 2
    assert totals["shard_errors"] >= 1
    assert totals["yielded"] == len(batches) and 2 <= len(batches) < 6
    assert raw[0]["__key__"] in _keys(batches) and raw[1]["__key__"] not in _keys(batches)


def test_one_shard_two_workers(synth_shards):
    from lit_avatar.data.datamodule import AvatarDataModule

    shard = str(synth_shards / "train-000000.tar")
    expected = sorted(_raw_samples(shard))
    # the raw stream with an idle second worker: no "No samples found", every sample exactly once
    loader = torch.utils.data.DataLoader(_stream([shard], SampleCounters(2), batch_size=1), batch_size=None,
                                         num_workers=2)
    assert sorted(_keys(_all(loader))) == expected
    data = AvatarDataModule(shard, batch_size=1, num_workers=2, clip_frames=10, drop_last=False)
    data_loader = data.train_dataloader()
    assert data_loader.num_workers == 1  # capped at the shards this node reads
    assert sorted(_keys(_all(data_loader))) == expected
    assert data.counters["train"]["yielded"] == len(expected)


def test_epochs_reshuffle_and_seed_reproduces(synth_shards):
    from lit_avatar.data.datamodule import AvatarDataModule

    def orders(seed):
        data = AvatarDataModule(str(synth_shards / "train-*.tar"), batch_size=1, clip_frames=5, seed=seed,
                                shuffle_buffer=8)
        loader = data.train_dataloader()
        return [_keys(_all(loader)) for _ in range(3)]

    first, again = orders(0), orders(0)
    assert first == again
    assert len({tuple(o) for o in first}) > 1
    assert all(sorted(o) == sorted(first[0]) for o in first)


def test_validation_is_deterministic_and_resizes(synth_shards):
    from lit_avatar.data.datamodule import AvatarDataModule

    data = AvatarDataModule(str(synth_shards / "train-*.tar"), str(synth_shards / "val-*.tar"), batch_size=4,
                            clip_frames=25, size=16)
    one, two = _all(data.val_dataloader()), _all(data.val_dataloader())
    assert _keys(one) == _keys(two) and len(_keys(one)) == 2
    assert torch.equal(one[0]["video"], two[0]["video"]) and one[0]["video"].shape == (2, 3, 25, 16, 16)
    assert one[0]["ref"].shape == (2, 3, 16, 16)


def test_shard_specs(synth_shards):
    braces = expand_shards(str(synth_shards / "train-{000000..000001}.tar"))
    assert braces == expand_shards(str(synth_shards / "train-*.tar")) and len(braces) == 2
    joined = expand_shards(f"{synth_shards}/train-000000.tar::{synth_shards}/val-*.tar")
    assert [p.rsplit("/", 1)[1] for p in joined] == ["train-000000.tar", "val-000000.tar"]
    with pytest.raises(UserError, match=r"data.train_shards: glob .*nothing-\*.tar.* matches no files"):
        expand_shards(str(synth_shards / "nothing-*.tar"), "data.train_shards")
    with pytest.raises(UserError, match=r"shard .*train-000002.tar.* does not exist"):
        expand_shards(str(synth_shards / "train-{000000..000009}.tar"))


def test_datamodule_rejects_bad_arguments(synth_shards):
    from lit_avatar.data.datamodule import AvatarDataModule

    with pytest.raises(UserError, match="data.train_shards: glob"):
        AvatarDataModule(str(synth_shards / "missing-*.tar")).setup("fit")
    with pytest.raises(UserError, match="data.batch_size=0"):
        AvatarDataModule(str(synth_shards / "train-*.tar"), batch_size=0)
    with pytest.raises(UserError, match="data.size=33"):
        AvatarDataModule(str(synth_shards / "train-*.tar"), size=33)


def test_precomputed_latents(synth_shards, tmp_path):
    raw = list(_raw_samples(synth_shards / "train-000000.tar").values())
    rng = np.random.default_rng(0)
    rewritten = []
    for index, sample in enumerate(raw):
        meta = dict(json.loads(sample["json"]), latent_temporal_factor=4)
        arrays = {"latents": rng.standard_normal((4, 7, 4, 4)), "ref_latent": rng.standard_normal((4, 1, 4, 4)),
                  "audio_feats": rng.standard_normal((25, 5, 8))}
        if index == 0:
            del arrays["latents"]  # unusable for precomputed training: skipped, counted
        rewritten.append(encode_sample(sample["__key__"], sample["mp4"], meta, arrays=arrays))
    _write_tar(tmp_path / "pre.tar", rewritten)
    counters = SampleCounters(0)
    batches = _all(_stream([str(tmp_path / "pre.tar")], counters, clip_frames=17, use_precomputed=True,
                           batch_size=3, train=False))
    assert counters.totals()["skipped_samples"] == 1 and len(batches) == 1
    batch = batches[0]
    assert "video" not in batch and "audio" not in batch and "ref" not in batch
    assert batch["latents"].shape == (3, 4, 5, 4, 4) and batch["ref_latent"].shape == (3, 4, 1, 4, 4)
    assert batch["audio_feats"].shape == (3, 17, 5, 8) and batch["mouth"].shape == (3, 17)
    stored = np.load(io.BytesIO(rewritten[1]["latents.npy"]))
    np.testing.assert_array_equal(batch["latents"][0].numpy(), stored[:, :5].astype(np.float32))


def test_schema_errors_name_key_and_field(synth_shards):
    sample = next(iter(_raw_samples(synth_shards / "train-000000.tar").values()))
    meta = json.loads(sample["json"])
    del meta["identity"]
    with pytest.raises(SampleError, match=f"sample {sample['__key__']}: json lacks required field 'identity'"):
        decode_sample(dict(sample, json=json.dumps(meta).encode()))
    with pytest.raises(SampleError, match="without dots"):
        encode_sample("a.b", b"", {})


def test_reference_fallback_without_stored_ref(synth_shards, tmp_path, decoded_train):
    raw = list(_raw_samples(synth_shards / "train-000000.tar").values())
    _write_tar(tmp_path / "noref.tar", [{k: v for k, v in s.items() if k != "ref.png"} for s in raw])
    batches = _all(_stream([str(tmp_path / "noref.tar")], clip_frames=10, batch_size=1))
    assert len(batches) == len(raw)
    for batch in batches:
        full = decoded_train[batch["meta"]["key"][0]]["video"].astype(np.float64)
        frames = (batch["video"][0].permute(1, 2, 3, 0).numpy() + 1) * 127.5
        start = int(np.argmin([np.abs(full[s:s + 10] - frames).mean() for s in range(len(full) - 9)]))
        ref = (batch["ref"][0].permute(1, 2, 0).numpy() + 1) * 127.5
        ref_index = int(np.argmin(np.abs(full - ref).mean(axis=(1, 2, 3))))
        assert ref_index in (0, len(full) - 1) and not start <= ref_index < start + 10


def test_epoch_without_a_full_batch_is_a_user_error(synth_shards):
    """Fewer training clips than one batch would make Lightning loop over empty epochs forever."""
    from lit_avatar.data.datamodule import AvatarDataModule
    from lit_avatar.errors import UserError

    dm = AvatarDataModule(train_shards=str(synth_shards / "train-*.tar"), batch_size=64, num_workers=0,
                          clip_frames=4, size=32)
    dm.setup("fit")
    with pytest.raises(UserError, match="no full batch of 64"):
        next(iter(dm.train_dataloader()))
