"""A resumed run continues the epoch's data position: finished shards are not read again, the shard that
was being read may repeat partially, and the union of both runs' shards is the whole epoch."""
from __future__ import annotations

import tarfile

import pytest
import torch

from lit_avatar.data.datamodule import AvatarDataModule
from lit_avatar.errors import UserError


@pytest.fixture(scope="module")
def six_shards(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """Six train shards of two 10-frame 24 px clips each; returns (glob, key -> shard path)."""
    from data_tools.synth import write_synthtalk

    out = tmp_path_factory.mktemp("six_shards")
    write_synthtalk(out, clips=12, seconds=0.4, shards=6, size=24, seed=5, identities=3)
    owner = {}
    for shard in sorted(out.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            owner.update({name.split(".", 1)[0]: str(shard) for name in tar.getnames()})
    return str(out / "train-*.tar"), owner


def _data(glob: str, workers: int) -> AvatarDataModule:
    return AvatarDataModule(glob, batch_size=1, num_workers=workers, clip_frames=8, shuffle_buffer=2, seed=7)


def _keys(batches) -> list[str]:
    return [key for batch in batches for key in batch["meta"]["key"]]


def _check_resumed(before: list[str], after: list[str], owner: dict[str, str]) -> None:
    """Every shard read; none read whole twice; finished shards skipped (the resumed part is shorter)."""
    assert set(before) | set(after) == set(owner)
    assert len(after) < len(owner)
    for shard in set(owner.values()):
        keys = {k for k, s in owner.items() if s == shard}
        assert not (keys <= set(before) and keys <= set(after)), f"{shard} read whole twice"
    assert len(after) == len(set(after))  # nothing repeats within the resumed part


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resumes_epoch_without_finished_shards(six_shards, workers):
    glob, owner = six_shards
    loader = _data(glob, workers).train_dataloader()
    assert loader.num_workers == workers
    iterator = iter(loader)
    before = [next(iterator)["meta"]["key"][0] for _ in range(7)]
    state = loader.state_dict()
    assert state["epoch"] == 0 and not state["epoch_done"] and state["finished_shards"]
    del iterator
    resumed = _data(glob, workers).train_dataloader()  # as after a restart: a fresh process
    resumed.load_state_dict(state)
    after = _keys(resumed)
    assert not set(state["finished_shards"]) & {owner[k] for k in after}
    _check_resumed(before, after, owner)
    # the resumed epoch counts the skipped shards as finished, and the next epoch is a whole new one
    assert resumed.state_dict()["epoch_done"] and len(resumed.state_dict()["finished_shards"]) == 6
    again = _keys(resumed)
    assert sorted(again) == sorted(owner) and resumed.state_dict()["epoch"] == 1


def test_batches_carry_no_internal_entries_and_done_epoch_resumes_next(six_shards):
    glob, owner = six_shards
    loader = _data(glob, 0).train_dataloader()
    epoch0 = list(loader)
    # SynthTalk captions travel as `txt` (a list of str; the stage's text encoder, if any, embeds them)
    assert all(set(b) == {"video", "audio", "ref", "mouth_box", "mouth", "meta", "txt"} for b in epoch0)
    state = loader.state_dict()
    assert state["epoch_done"] and state["epoch"] == 0
    fresh = _data(glob, 0).train_dataloader()
    fresh.load_state_dict(state)
    reference = _data(glob, 0).train_dataloader()
    list(reference)
    assert _keys(fresh) == _keys(reference) != _keys(epoch0)  # epoch 1, the same order as uninterrupted
    with pytest.raises(UserError, match="data-loader state.*expected a dict with keys epoch"):
        fresh.load_state_dict({"position": 3})


class _Recorder:
    """A LightningModule factory that records the clip keys it trains on."""

    @staticmethod
    def build():
        import lightning.pytorch as pl

        class Recorder(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))
                self.seen: list[str] = []

            def training_step(self, batch, batch_idx):
                self.seen.extend(batch["meta"]["key"])
                return (self.weight * batch["audio"].mean()).sum() + self.weight.square().sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Recorder()


def test_lightning_checkpoint_restores_data_position(six_shards, tmp_path):
    """Lightning saves the loader state in the checkpoint and loads it on resume (one batch is pre-fetched
    when the checkpoint is taken: its shard is read again, not lost)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    glob, owner = six_shards

    def trainer(root, callbacks=()):
        return pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=str(root), callbacks=list(callbacks),
                          num_sanity_val_steps=0, limit_val_batches=0)

    full = _Recorder.build()
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_top_k=-1,
                                  filename="{step}")
    trainer(tmp_path / "a", [checkpoints]).fit(full, datamodule=_data(glob, 0))
    assert sorted(full.seen) == sorted(owner)
    # resume where one shard is finished and the batch pre-fetched at the checkpoint (trained only after
    # it) finishes another: counting that one as finished too would lose its clip
    last_index = {shard: max(i for i, k in enumerate(full.seen) if owner[k] == shard) for shard in set(owner.values())}
    steps = sorted(i for i in last_index.values() if 2 <= i < len(full.seen) - 1)
    assert len(steps) >= 2, "fewer than two shards finish mid-epoch with this seed"
    step = steps[1]
    ckpt = tmp_path / "ckpt" / f"step={step}.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert state["epoch"] == 0 and not state["epoch_done"]
    assert set(state["finished_shards"]) <= {owner[k] for k in full.seen[:step]}  # trained clips' shards only

    resumed = _Recorder.build()
    trainer(tmp_path / "b").fit(resumed, datamodule=_data(glob, 0), ckpt_path=str(ckpt))
    _check_resumed(full.seen[:step], resumed.seen, owner)
