"""Injected optimizers and schedules: the stages' defaults are the AdamW settings and warm-up they had as
fixed arguments (same groups, same learning rate at every step), a config can show and change them, and the
manually optimised DMD steps the schedules it is given."""
import pytest
import torch
from torch import nn

from lit_avatar.errors import UserError
from lit_avatar.models.vae import PatchVAE
from lit_avatar.modules.optim import LinearWarmup, param_groups


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(4, 4, 1), nn.LayerNorm(4), nn.Linear(4, 4))


def teacher_module(**kwargs):
    from lit_avatar.modules.teacher import TeacherModule

    return TeacherModule(model=net(0), vae=PatchVAE(2), ema_settings=None, **kwargs)


def ode_module(**kwargs):
    from lit_avatar.modules.ode_init import ODEInitModule

    return ODEInitModule(net(0), net(1), vae=PatchVAE(2), ema_settings=None, **kwargs)


def dmd_module(**kwargs):
    from lit_avatar.modules.self_forcing import SelfForcingModule

    return SelfForcingModule(net(0), net(1), critic=net(2), vae=PatchVAE(2), ema_settings=None, **kwargs)


def old_adamw(model: nn.Module, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """What the stages built before optimizers were injected (build_adamw, weight decay 0.01)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=1e-8)


def old_warmup_factor(warmup_steps: int, step: int) -> float:
    """The former linear_warmup's learning-rate factor at optimizer step `step`."""
    return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)


def old_warmup_lr(lr: float, warmup_steps: int, step: int) -> float:
    return lr * old_warmup_factor(warmup_steps, step)


def lrs_over(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[list[float]]:
    """Each group's learning rate at each of `steps` optimizer steps, stepping as Lightning does per step."""
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("make, network, warmup_steps", [(teacher_module, "model", 100), (ode_module, "generator", 20)])
def test_default_optimizer_and_warmup_are_the_former_fixed_ones(make, network, warmup_steps):
    module = make()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    old = old_adamw(getattr(module, network), lr=1e-4, betas=(0.9, 0.999))
    old_scheduler = torch.optim.lr_scheduler.LambdaLR(old, lambda step: old_warmup_factor(warmup_steps, step))
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.state_dict()["param_groups"] == old.state_dict()["param_groups"]
    steps = 30  # past the ODE stage's warm-up of 20, inside the teacher's of 100
    formula = [[old_warmup_lr(1e-4, warmup_steps, step)] * 2 for step in range(steps)]
    assert lrs_over(optimizer, scheduler, steps) == formula == lrs_over(old, old_scheduler, steps)  # exactly


def test_callable_types_are_lightning_cli_ones():
    """Spelled in optim.py (no jsonargparse on the GPU machine), the same types LightningCLI documents."""
    from typing import get_args

    from lightning.pytorch import cli

    from lit_avatar.modules.optim import LRSchedulerCallable, OptimizerCallable

    assert get_args(OptimizerCallable) == get_args(cli.OptimizerCallable)  # ours: collections.abc.Callable
    (ours_in, ours_out), (theirs_in, theirs_out) = get_args(LRSchedulerCallable), get_args(cli.LRSchedulerCallable)
    assert ours_in == theirs_in and all(any(issubclass(t, o) for o in get_args(ours_out)) for t in get_args(theirs_out))


def test_linear_warmup_state_dict_is_the_former_lambdalr_one():
    """Checkpoints of runs made before keep resuming: same keys, and no callable stored."""
    model = net(0)
    new_opt, old_opt = torch.optim.AdamW(param_groups(model), lr=1e-3), old_adamw(model, 1e-3, (0.9, 0.999))
    new, old = LinearWarmup(new_opt, 7), torch.optim.lr_scheduler.LambdaLR(old_opt, lambda s: min(1.0, (s + 1) / 7))
    for _ in range(3):
        new_opt.step(), new.step(), old_opt.step(), old.step()
    assert new.state_dict() == old.state_dict()
    fresh = LinearWarmup(torch.optim.AdamW(param_groups(model), lr=1e-3), 7)
    fresh.load_state_dict(old.state_dict())
    assert fresh.get_last_lr() == old.get_last_lr() and fresh.last_epoch == 3


def test_linear_warmup_of_zero_steps_starts_at_full_rate_and_negative_is_refused():
    opt = torch.optim.SGD(param_groups(net(0)), lr=0.5)
    assert lrs_over(opt, LinearWarmup(opt, 0), 3) == [[0.5, 0.5]] * 3
    with pytest.raises(UserError, match="warmup_steps"):
        LinearWarmup(opt, -1)


def test_dmd_defaults_are_the_former_adamw_without_momentum_and_no_schedule():
    module = dmd_module()
    generator, critic = module.configure_optimizers()
    assert "lr_scheduler" not in generator and "lr_scheduler" not in critic
    for config, network, lr in ((generator, module.generator, 2e-6), (critic, module.critic, 4e-7)):
        expected = old_adamw(network, lr=lr, betas=(0.0, 0.999))
        assert config["optimizer"].state_dict()["param_groups"] == expected.state_dict()["param_groups"]


def test_dmd_steps_each_schedule_with_its_own_optimizer():
    """critic_steps 2 over 2 steps: the generator updates at step 0, the critic at both."""
    from tests.test_self_forcing import _fit, make_module

    module = make_module(critic_steps=2, generator_lr_scheduler=lambda opt: LinearWarmup(opt, warmup_steps=4),
                         critic_lr_scheduler=lambda opt: LinearWarmup(opt, warmup_steps=8))
    trainer = _fit(module, 2)
    generator, critic = trainer.optimizers
    assert [config.scheduler.last_epoch for config in trainer.lr_scheduler_configs] == [1, 2]
    assert generator.param_groups[0]["lr"] == old_warmup_lr(2e-6, 4, 1)
    assert critic.param_groups[0]["lr"] == old_warmup_lr(4e-7, 8, 2)


def test_dmd_refuses_a_plateau_schedule_by_name():
    module = dmd_module(critic_lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    with pytest.raises(UserError, match="model.critic_lr_scheduler: ReduceLROnPlateau"):
        module.configure_optimizers()


def dumped_defaults(module_class) -> dict:
    """The module's defaults as --print_config writes them."""
    import yaml
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(module_class, "model")
    return yaml.safe_load(parser.dump(parser.get_defaults(), skip_validation=True, skip_unset=False))["model"]


@pytest.mark.parametrize("module_path, keys", [
    ("lit_avatar.modules.teacher.TeacherModule", {"optimizer": "torch.optim.AdamW",
                                                  "lr_scheduler": "lit_avatar.modules.optim.LinearWarmup"}),
    ("lit_avatar.modules.ode_init.ODEInitModule", {"optimizer": "torch.optim.AdamW",
                                                   "lr_scheduler": "lit_avatar.modules.optim.LinearWarmup"}),
])
def test_defaults_show_in_the_config_as_class_path_and_init_args(module_path, keys):
    """jsonargparse reads a lambda default into class_path/init_args only while its arguments are constants; a
    default it cannot read would print as 'Unable to serialize' in --print_config and in saved configs."""
    import importlib

    module_name, class_name = module_path.rsplit(".", 1)
    defaults = dumped_defaults(getattr(importlib.import_module(module_name), class_name))
    for key, class_path in keys.items():
        assert defaults[key]["class_path"] == class_path, key
    adamw = defaults["optimizer"]["init_args"]
    assert adamw["lr"] == 1e-4 and adamw["betas"] == [0.9, 0.999] and adamw["weight_decay"] == 0.01


def test_dmd_defaults_show_in_the_config_by_import_path():
    from lit_avatar.modules.self_forcing import SelfForcingModule

    defaults = dumped_defaults(SelfForcingModule)
    assert defaults["generator_optimizer"] == "lit_avatar.modules.optim.dmd_generator_adamw"
    assert defaults["critic_optimizer"] == "lit_avatar.modules.optim.dmd_critic_adamw"
    assert defaults["generator_lr_scheduler"] is None and defaults["critic_lr_scheduler"] is None
