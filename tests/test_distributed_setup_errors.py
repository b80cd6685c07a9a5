"""Distributed setup mistakes fail before any process starts, as one line naming the key and the fix."""
from pathlib import Path

import pytest

from lit_avatar.errors import UserError

TINY = Path(__file__).resolve().parents[1] / "experiments" / "teacher" / "synthtalk_tiny.yaml"


def _trainer(**kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **kwargs)


def test_mesh_sizes_that_do_not_make_the_world_size():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_avatar.lightning_cli import check_distributed_setup

    trainer = _trainer(devices=2, strategy=ModelParallelStrategy(data_parallel_size=3, tensor_parallel_size=1))
    with pytest.raises(UserError, match=r"data_parallel_size \(3\) x tensor_parallel_size \(1\) = 3 .* = 2") as err:
        check_distributed_setup(trainer)
    assert "\n" not in str(err.value) and "auto" in str(err.value)
    check_distributed_setup(_trainer(devices=2, strategy=ModelParallelStrategy()))  # auto sizes fit


def test_several_nodes_without_rendezvous_variables(monkeypatch):
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lit_avatar.lightning_cli import check_distributed_setup

    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    trainer = _trainer(devices=2, num_nodes=2, strategy=ModelParallelStrategy())
    with pytest.raises(UserError, match=r"trainer.num_nodes=2: environment variable MASTER_ADDR .*torchrun"):
        check_distributed_setup(trainer)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("NODE_RANK", "1")
    check_distributed_setup(trainer)


def test_strategy_that_cannot_run_on_the_accelerator_is_one_line(capsys):
    from lit_avatar.cli import main

    code = main(["fit", "--config", str(TINY), "--trainer.strategy=lightning.pytorch.strategies.FSDPStrategy",
                 "--trainer.devices=2", "--trainer.logger=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: trainer.strategy:") and "ModelParallelStrategy" in err[0]
