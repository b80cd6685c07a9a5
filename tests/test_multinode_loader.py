"""The loader side of multi-node training, with 2 gloo processes as 2 nodes: each rank reads disjoint shards,
the union over ranks is the data set once per epoch, and a run resumed from the gathered loader state
continues the epoch where it stopped (finished shards are not read again, none is lost)."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """Eight train shards of two clips each; returns (glob, key -> shard path)."""
    from data_tools.synth import write_synthtalk

    out = tmp_path_factory.mktemp("multinode_shards")
    write_synthtalk(out, clips=16, seconds=0.4, shards=8, size=24, seed=5, identities=4)
    owner = {}
    for shard in sorted(out.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            owner.update({name.split(".", 1)[0]: str(shard) for name in tar.getnames()})
    return str(out / "train-*.tar"), owner


def _loader(glob: str, workers: int):
    from lit_avatar.data.datamodule import AvatarDataModule

    data = AvatarDataModule(glob, batch_size=1, num_workers=workers, clip_frames=8, shuffle_buffer=2, seed=7)
    return data.train_dataloader()


def _keys(batches) -> list[str]:
    return [key for batch in batches for key in batch["meta"]["key"]]


def _rank(rank: int, world: int, init: str, glob: str, workers: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        epoch = _keys(_loader(glob, workers))
        loader = _loader(glob, workers)
        iterator = iter(loader)
        before = [next(iterator)["meta"]["key"][0] for _ in range(4)]
        state = loader.state_dict()  # every rank calls it: it gathers the finished shards of all ranks
        del iterator
        resumed = _loader(glob, workers)  # as after a restart
        resumed.load_state_dict(state)
        after = _keys(resumed)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(
            {"epoch": epoch, "before": before, "after": after, "state": state}))
    finally:
        dist.destroy_process_group()


SLOW = pytest.mark.slow


# DataLoader workers spawned as under ddp_spawn must still know their rank (0 workers: the main process reads)
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=SLOW), pytest.param(0, marks=SLOW)])
def test_two_gloo_ranks_split_cover_and_resume(shards, tmp_path, workers):
    glob, owner = shards
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_rank, args=(2, init, glob, workers, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # one epoch: disjoint shards per rank, every clip exactly once over the ranks
    shard_sets = [{owner[k] for k in r["epoch"]} for r in ranks]
    assert shard_sets[0] and shard_sets[1] and not shard_sets[0] & shard_sets[1]
    epoch = ranks[0]["epoch"] + ranks[1]["epoch"]
    assert sorted(epoch) == sorted(owner)
    # resume: the gathered state is the same on both ranks; finished shards are skipped, nothing is lost
    assert ranks[0]["state"] == ranks[1]["state"] and ranks[0]["state"]["finished_shards"]
    finished = set(ranks[0]["state"]["finished_shards"])
    after = ranks[0]["after"] + ranks[1]["after"]
    assert not finished & {owner[k] for k in after}
    assert len(after) == len(set(after)) and len(after) < len(owner)
    # Lightning trains a batch after fetching the next one: the last batch handed out was not trained
    before = ranks[0]["before"][:-1] + ranks[1]["before"][:-1]
    assert set(before) | set(after) == set(owner)
    for shard in set(owner.values()):  # a shard may repeat partially (it was being read), never whole
        keys = {k for k, s in owner.items() if s == shard}
        assert not (keys <= set(before) and keys <= set(after)), f"{shard} read whole twice"
