"""`lit-avatar fit|validate|test|predict`: LightningCLI over class_path/init_args YAML in experiments/.

Everything is built here and only here: the YAML names the classes (DiT, VAE, audio encoder, data
module) and LightningCLI instantiates and injects them. Config files stack (`--config a.yaml --config
b.yaml`, later wins), `--print_config` is the dry run, and the fully resolved config is saved next to the
run's logs (config.yaml) and inside every checkpoint (key `lit_avatar_config`, a YAML string, so a
checkpoint alone says how it was made and loads with weights_only=True).
"""
from __future__ import annotations

import sys
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lit_avatar.command import one_line, option_strings
from lit_avatar.errors import UserError

CONFIG_CHECKPOINT_KEY = "lit_avatar_config"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SaveConfigEverywhere(SaveConfigCallback):
    """The stock callback writes config.yaml into the log dir; this one also stores it in checkpoints."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_CHECKPOINT_KEY] = self.parser.dump(self.config, skip_unset=False)


class AvatarCLI(LightningCLI):
    """LightningCLI with the project's defaults: TensorBoard logs under runs/, resumable last.ckpt."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        per_parser = {"parser_mode": "omegaconf", "exit_on_error": False}
        parser_kwargs = {**per_parser, **{name: dict(per_parser) for name in SUBCOMMANDS}}
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        args = list(sys.argv[1:] if args is None else args)
        if args == sys.argv[1:]:
            # the command line itself: LightningCLI reads it, and sys.argv stays whole, which is what
            # Lightning's launcher re-runs for the other local ranks (devices > 1 without torchrun)
            self._init(None, run, parser_kwargs, kwargs)
            return
        saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when argv and args are both set
        try:
            self._init(args, run, parser_kwargs, kwargs)
        finally:
            sys.argv = saved_argv

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse as LightningCLI does; a mistake becomes one line, a misspelt option names the closest one."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = list(sys.argv[1:] if args is None else args)  # None: LightningCLI read the command line
            raise UserError(one_line(err, "lit-avatar", option_strings(parser), argv)) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with strategy/accelerator mismatches and distributed setup errors as one line."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except ValueError as err:
            if isinstance(err, UserError) or "strateg" not in str(err):
                raise
            raise UserError(f"trainer.strategy: {str(err).splitlines()[0]} (the 1.3B recipes use "
                            "lightning.pytorch.strategies.ModelParallelStrategy, FSDP2, on CPU and GPU)") from None
        check_distributed_setup(trainer)
        return trainer

    def before_fit(self) -> None:
        self._read_checkpoints_as_data()

    def before_validate(self) -> None:
        self._read_checkpoints_as_data()

    def before_test(self) -> None:
        self._read_checkpoints_as_data()

    def before_predict(self) -> None:
        self._read_checkpoints_as_data()

    def _read_checkpoints_as_data(self) -> None:
        """`--ckpt_path` (resume) reads with weights_only=True unless `--weights_only false` is given: Lightning
        passes None to torch.load, whose default an environment variable (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)
        can turn off."""
        settings = self.config_init[self.subcommand]
        if settings.get("weights_only") is None:
            settings["weights_only"] = True

    def _init(self, args: list[str] | None, run: bool, parser_kwargs: dict, kwargs: dict) -> None:
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigEverywhere,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )


def check_distributed_setup(trainer: Trainer) -> None:
    """Fail before any process is launched, in one line naming the key and the fix, where a distributed run
    could only fail later in every process (mesh sizes that do not multiply to the world size) or hang
    (several nodes without a rendezvous address)."""
    import os

    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = trainer.strategy
    world = trainer.num_devices * trainer.num_nodes
    if isinstance(strategy, ModelParallelStrategy):
        dp, tp = strategy._data_parallel_size, strategy._tensor_parallel_size
        dp = trainer.num_nodes if dp == "auto" else int(dp)
        tp = trainer.num_devices if tp == "auto" else int(tp)
        if dp * tp != world:
            raise UserError(
                f"trainer.strategy.init_args: data_parallel_size ({dp}) x tensor_parallel_size ({tp}) = {dp * tp} "
                f"processes, but trainer.devices x trainer.num_nodes = {world}; set both to auto (shard within a "
                f"node, replicate across nodes) or make their product {world}")
    environment = getattr(strategy, "cluster_environment", None)
    if trainer.num_nodes > 1 and environment is not None and not environment.creates_processes_externally:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if name not in os.environ]
        if missing:
            raise UserError(
                f"trainer.num_nodes={trainer.num_nodes}: environment variable {missing[0]} is not set; on every node "
                "set MASTER_ADDR (node 0's address), MASTER_PORT and NODE_RANK (0..num_nodes-1), or launch with "
                "torchrun / srun")


def default_trainer_settings() -> dict[str, Any]:
    """Trainer defaults every experiment shares; YAML `trainer:` keys override them."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "default"},
        },
        # `--ckpt_path runs/<name>/version_N/checkpoints/last.ckpt` resumes a run
        "callbacks": [ModelCheckpoint(save_last=True)],
    }


def main(argv: list[str] | None = None) -> int:
    """Run LightningCLI on `argv` (e.g. ["fit", "--config", "experiments/teacher/synthtalk_tiny.yaml"])."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        AvatarCLI(args=argv)
    except ArgumentError as err:
        raise UserError(one_line(err, "lit-avatar", (), argv)) from None
    except SystemExit as err:  # --help and --print_config exit cleanly
        return int(err.code or 0)
    except (ValueError, TypeError) as err:
        # jsonargparse wraps what a constructor raised while instantiating; surface a UserError as itself
        cause = _user_error_in_chain(err)
        if cause is None:
            raise
        raise cause from None
    return 0


def fit(argv: list[str]) -> int:
    return main(["fit", *argv])


def validate(argv: list[str]) -> int:
    return main(["validate", *argv])


def test(argv: list[str]) -> int:
    return main(["test", *argv])


def predict(argv: list[str]) -> int:
    return main(["predict", *argv])


def _user_error_in_chain(err: BaseException) -> UserError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    from lit_avatar.cli import main as cli_main

    sys.exit(cli_main(["fit", *sys.argv[1:]]))
