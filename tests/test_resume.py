"""A run killed mid-way and resumed from its checkpoint continues exactly like an uninterrupted one:
optimisers, EMA, critic, step count, generator-update count and data position."""
import torch
from batches import random_batch

from lit_avatar.modules.ema import EMASettings
from tests.test_self_forcing import adamw, make_module


class PositionedBatches:
    """A batch iterable that knows its position, so Lightning stores it in the checkpoint and a resumed run
    continues mid-epoch with the next batch (Lightning saves iterables with state_dict/load_state_dict)."""

    def __init__(self, batches):
        self.batches = batches
        self.position = 0
        self.seen = []

    def __iter__(self):
        while self.position < len(self.batches):
            item = self.batches[self.position]
            self.position += 1
            self.seen.append(item["meta"]["key"][0])
            yield item
        self.position = 0

    def __len__(self):
        return len(self.batches)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _trainer(max_steps, root, callbacks=()):
    import lightning.pytorch as pl

    return pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(root), callbacks=list(callbacks), num_sanity_val_steps=0)


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = [random_batch(seed=i) for i in range(6)]
    kwargs = dict(critic_steps=2, generator_optimizer=adamw(1e-3), critic_optimizer=adamw(1e-3),
                  ema_settings=EMASettings(0.5, 0))

    full = make_module(**kwargs)
    full_data = PositionedBatches(data)
    ckpt_cb = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1,
                              filename="{step}")
    _trainer(5, tmp_path / "a", [ckpt_cb]).fit(full, full_data)
    mid = tmp_path / "ckpt" / "step=3.ckpt"
    assert mid.is_file()

    resumed = make_module(**kwargs)
    resumed_data = PositionedBatches(data)
    trainer = _trainer(5, tmp_path / "b")
    trainer.fit(resumed, resumed_data, ckpt_path=str(mid))

    assert trainer.global_step == 5 and resumed.generator_updates == full.generator_updates == 3
    assert resumed_data.seen == full_data.seen[3:5]  # the data position came back with the checkpoint
    for name, a in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], a, rtol=0, atol=0, msg=name)
    for opt_a, opt_b in zip(full.trainer.optimizers, trainer.optimizers):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            for field in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(sb[k][field], sa[k][field], rtol=0, atol=0)
