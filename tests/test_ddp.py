"""Lightning DDP over 2 CPU processes (gloo) trains the Self-Forcing module on SynthTalk shards: each rank
reads its own shard, and the manually optimised generator and critic stay identical across ranks."""
import json

import lightning.pytorch as pl
import torch

from lit_avatar.modules.ema import EMASettings
from tests.test_self_forcing import adamw, make_module


class RecordPerRank(pl.Callback):
    """Writes the sample keys each rank trained on, and its weights."""

    def __init__(self, folder):
        self.folder = folder
        self.keys = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys.extend([trainer.current_epoch, k] for k in batch["meta"]["key"])

    def on_train_end(self, trainer, pl_module):
        weights = {name: {k: v.detach().clone() for k, v in getattr(pl_module, name).state_dict().items()}
                   for name in ("generator", "critic", "generator_ema")}
        torch.save(weights, f"{self.folder}/rank{trainer.global_rank}.pt")
        with open(f"{self.folder}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"keys": self.keys, "step": trainer.global_step,
                       "generator_updates": pl_module.generator_updates}, f)


def test_two_process_ddp_splits_shards_and_keeps_ranks_in_sync(synth_shards, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    from lit_avatar.data.datamodule import AvatarDataModule

    module = make_module(critic_steps=2, generator_optimizer=adamw(1e-3), critic_optimizer=adamw(1e-3),
                         ema_settings=EMASettings(0.5, 0))
    data = AvatarDataModule(train_shards=str(synth_shards / "train-*.tar"), batch_size=2, clip_frames=4, size=16,
                            num_workers=0, shuffle_buffer=0)
    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo", find_unused_parameters=True)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordPerRank(str(tmp_path))])
    initial = {k: v.clone() for k, v in module.generator.state_dict().items()}
    trainer.fit(module, datamodule=data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["step"] == 3 and r["generator_updates"] == 2 for r in ranks)
    first_epoch = [{k for e, k in r["keys"] if e == 0} for r in ranks]
    # within an epoch each rank reads its own shard (shard order is reshuffled per epoch, the same on all ranks)
    assert len(first_epoch[0]) == len(first_epoch[1]) == 4 and not first_epoch[0] & first_epoch[1]
    # gradients were all-reduced: every parameter and buffer of every network is the same on both ranks, bit for bit
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in ("generator", "critic", "generator_ema"):
        assert weights[0][name].keys() == weights[1][name].keys()
        for key, value in weights[0][name].items():
            assert torch.equal(value, weights[1][name][key]), f"{name}.{key}"
    assert any(not torch.equal(v, weights[0]["generator"][k]) for k, v in initial.items())  # and they moved
