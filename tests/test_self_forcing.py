"""Self-Forcing DMD: the gradient flows only through the exit step; a few manual-optimisation steps."""
import functools

import pytest
import torch
from batches import random_batch

from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset
from lit_avatar.models.vae import PatchVAE
from lit_avatar.modules.conditions import clip_inputs
from lit_avatar.modules.ema import EMASettings

OPTS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[3, 2]), urcr=URCROptions(max_frames=6, keep_frames=2))


def micro_dit(seed):
    torch.manual_seed(seed)
    model = AvatarDiT(config=get_preset("micro", audio_feature_dim=40))
    for block in model.blocks:  # a live audio path, so audio CFG is not a no-op
        torch.nn.init.normal_(block.audio_attn.o.weight, std=0.05)
    return model


def adamw(lr: float):
    """The stage's default optimizer (AdamW, betas (0, 0.999), weight decay 0.01) at another learning rate."""
    return functools.partial(torch.optim.AdamW, lr=lr, betas=(0.0, 0.999), weight_decay=0.01)


def make_module(**kwargs):
    from lit_avatar.modules.self_forcing import SelfForcingModule

    kwargs.setdefault("critic_steps", 2)
    teacher = micro_dit(0)
    critic = micro_dit(1)  # differs from the teacher: a non-zero DMD gradient from the first step
    return SelfForcingModule(micro_dit(2), teacher, critic=critic, rollout=OPTS, vae=PatchVAE(2),
                             audio_encoder=MelAudioEncoder(), **kwargs)



def test_gradient_flows_only_through_the_exit_forward():
    module = make_module()
    gen = module.generator
    calls = []
    original = gen.forward_cached

    def spy(x, timestep, frame_positions, cache, audio_tokens=None, write_frames=None, **kwargs):
        calls.append({"grad": torch.is_grad_enabled(), "write": write_frames is not None, "t": float(timestep[0])})
        return original(x, timestep, frame_positions, cache, audio_tokens, write_frames, **kwargs)

    gen.forward_cached = spy
    x0, conds = clip_inputs(random_batch(), module.vae, module.audio_encoder)
    from lit_avatar.inference.clip_rollout import rollout_clip

    x, rollout = rollout_clip(gen, OPTS, conds, tuple(x0.shape), exit_steps=[1, 0],
                              generator=torch.Generator().manual_seed(0), training=True)
    # block 0 (3 steps, exit 1): step 0 no grad, step 1 grad, cache write no grad;
    # block 1 (2 steps, exit 0): step 0 grad, cache write no grad
    assert [(c["grad"], c["write"]) for c in calls] == [(False, False), (True, False), (False, True),
                                                         (True, False), (False, True)]
    assert [r.forwards for r in rollout.records] == [3, 2]
    assert x.requires_grad
    out = module.dmd(x, module.teacher, module.critic, conds, torch.Generator().manual_seed(1))
    assert out.grad.abs().sum() > 0
    out.loss.backward()
    grads = [p.grad for p in gen.parameters() if p.requires_grad]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.critic.parameters())  # DMD reads the critic without gradient


def test_training_steps_update_generator_every_critic_steps_and_save_a_student_record(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    module = make_module(critic_steps=2, generator_optimizer=adamw(1e-3), critic_optimizer=adamw(1e-3),
                         ema_settings=EMASettings(0.5, 0), val_max_samples=2)
    gen0 = [p.detach().clone() for p in module.generator.parameters()]
    critic0 = [p.detach().clone() for p in module.critic.parameters()]
    teacher0 = [p.detach().clone() for p in module.teacher.parameters()]
    loader = torch.utils.data.DataLoader([random_batch(seed=i) for i in range(3)], batch_size=None)
    trainer = pl.Trainer(max_steps=3, logger=TensorBoardLogger(str(tmp_path), name="sf"), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=0)
    trainer.fit(module, loader, torch.utils.data.DataLoader([random_batch(seed=9)], batch_size=None))
    assert trainer.global_step == 3  # one critic update per batch
    assert module.generator_updates == 2  # steps 0 and 2
    assert any(not torch.equal(a, p) for a, p in zip(gen0, module.generator.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(critic0, module.critic.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(teacher0, module.teacher.parameters()))
    assert not torch.equal(module.generator_ema.head.head.weight, module.generator.head.head.weight)
    metrics = trainer.callback_metrics
    for key in ("train/generator_loss", "train/critic_loss", "train/dmd_grad_norm", "val/synthsync_r",
                "val/synthsync_r_shuffled", "val/boundary_flicker_ratio"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert module.teacher.training is False and module.generator_ema.training is False
    trainer.save_checkpoint(tmp_path / "sf.ckpt")
    ckpt = torch.load(tmp_path / "sf.ckpt", weights_only=True)
    assert ckpt["lit_avatar"]["kind"] == "student" and ckpt["lit_avatar"]["rollout"]["psb"]["steps"] == [3, 2]
    from lit_avatar.checkpoint import load_generator

    bundle = load_generator(str(tmp_path / "sf.ckpt"))
    torch.testing.assert_close(bundle.model.head.head.weight, module.generator_ema.head.head.weight)
    assert bundle.rollout_options == OPTS


def test_stage_weights_chain_teacher_to_student(tmp_path):
    """generator_weights / teacher_weights load an earlier stage's checkpoint (its EMA by default)."""
    teacher = micro_dit(5)
    state = {f"ema_model.{k}": v for k, v in teacher.state_dict().items()}
    state.update({f"model.{k}": torch.zeros_like(v) for k, v in teacher.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "teacher.ckpt")
    from lit_avatar.modules.self_forcing import SelfForcingModule

    module = SelfForcingModule(micro_dit(6), micro_dit(7), rollout=OPTS, vae=PatchVAE(2),
                               teacher_weights=str(tmp_path / "teacher.ckpt"),
                               generator_weights=str(tmp_path / "teacher.ckpt"))
    for net in (module.teacher, module.critic, module.generator):
        torch.testing.assert_close(net.head.head.weight, teacher.head.head.weight)
    assert module.critic is not module.teacher and all(p.requires_grad for p in module.critic.parameters())
    import pytest

    from lit_avatar.errors import UserError

    with pytest.raises(UserError, match="missing.ckpt"):
        SelfForcingModule(micro_dit(6), micro_dit(7), rollout=OPTS, vae=PatchVAE(2),
                          teacher_weights=str(tmp_path / "missing.ckpt"))


def _fit(module, steps, callbacks=()):
    import lightning.pytorch as pl

    loader = torch.utils.data.DataLoader([random_batch(seed=i) for i in range(steps)], batch_size=None)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, loader)
    return trainer


def test_ema_start_counts_iterations_like_self_forcing():
    """EMA start step 2 with a generator update every iteration: copies after iterations 0 and 1, then averages
    once, at iteration 2 (counting generator updates instead would average after the 2nd update already)."""
    import lightning.pytorch as pl

    after = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after.append([p.detach().clone() for p in pl_module.generator.parameters()])

    module = make_module(critic_steps=1, generator_optimizer=adamw(1e-2), ema_settings=EMASettings(0.5, 2))
    _fit(module, 3, [Snapshot()])
    assert module.generator_updates == 3
    for ema, w1, w2 in zip(module.generator_ema.parameters(), after[1], after[2]):
        torch.testing.assert_close(ema, 0.5 * w1 + 0.5 * w2)


def _critic_inputs(module, steps=1):
    """Run `steps` training steps; return the generator's rollouts (output, its weights then) and the critic's
    training samples."""
    import lit_avatar.modules.self_forcing as sf

    rollouts, critic_samples = [], []
    generate, flow_loss = module.generate, sf.critic_flow_loss

    def spy_generate(*args, **kwargs):
        weights = [p.detach().clone() for p in module.generator.parameters()]
        out = generate(*args, **kwargs)
        rollouts.append((out.detach().clone(), weights))
        return out

    def spy_loss(critic, samples, *args, **kwargs):
        critic_samples.append(samples.detach().clone())
        return flow_loss(critic, samples, *args, **kwargs)

    module.generate = spy_generate
    sf.critic_flow_loss = spy_loss
    try:
        _fit(module, steps)
    finally:
        sf.critic_flow_loss = flow_loss
    return rollouts, critic_samples


def test_critic_trains_on_a_fresh_rollout_of_the_updated_generator_by_default():
    module = make_module(critic_steps=2, generator_optimizer=adamw(1e-2))
    assert module.hparams.critic_sample == "fresh"
    rollouts, critic_samples = _critic_inputs(module)
    (x_gen, w_before), (x_fresh, w_after) = rollouts  # the generator's rollout, then the critic's
    assert any(not torch.equal(a, b) for a, b in zip(w_before, w_after))  # rolled out after the update
    assert all(torch.equal(a, b.detach()) for a, b in zip(w_after, module.generator.parameters()))
    assert torch.equal(critic_samples[0], x_fresh) and not torch.allclose(x_fresh, x_gen, atol=1e-3)


def test_critic_reuse_option_trains_on_the_generator_pre_update_sample():
    module = make_module(critic_steps=2, generator_optimizer=adamw(1e-2), critic_sample="reuse")
    rollouts, critic_samples = _critic_inputs(module)
    assert len(rollouts) == 1 and torch.equal(critic_samples[0], rollouts[0][0])


def test_critic_sample_rejects_unknown_values():
    import pytest

    from lit_avatar.errors import UserError

    with pytest.raises(UserError, match="model.critic_sample"):
        make_module(critic_sample="stale")


def test_both_optimizers_step_through_the_precision_plugin_and_clip_by_the_logged_norm():
    """The generator step goes through the strategy's precision plugin like the critic's (a gradient scaler
    would run for both) without counting as a global step; each network is clipped by its own norm."""
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.precision import Precision

    from tests.test_resume import PositionedBatches

    class CountingPrecision(Precision):
        def __init__(self):
            self.steps = []

        def optimizer_step(self, optimizer, model, closure, **kwargs):
            self.steps.append(model.trainer.optimizers.index(optimizer))
            return super().optimizer_step(optimizer, model, closure, **kwargs)

    class RecordNorms(pl.Callback):
        def __init__(self):
            self.rows = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            index = trainer.optimizers.index(optimizer)
            net = pl_module.generator if index == 0 else pl_module.critic
            params = [p for p in net.parameters() if p.grad is not None]
            self.rows.append([index, float(torch.stack([p.grad.norm() for p in params]).norm()), params])

    module = make_module(critic_steps=2, grad_clip=1e-3)
    precision, norms = CountingPrecision(), RecordNorms()
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, plugins=[precision], callbacks=[norms])
    trainer.fit(module, PositionedBatches([random_batch(seed=i) for i in range(3)]))
    assert trainer.global_step == 3 and module.generator_updates == 2
    assert precision.steps == [0, 1, 1, 0, 1]  # generator at steps 0 and 2, critic at every step
    for _, raw_norm, params in norms.rows[-2:]:  # the gradients left by the last step of each network
        clipped = float(torch.stack([p.grad.norm() for p in params]).norm())
        assert raw_norm > 1e-2 and clipped == pytest.approx(1e-3, rel=1e-3)
    logged = trainer.callback_metrics
    assert float(logged["train/critic_grad_norm"]) == pytest.approx(norms.rows[-1][1], rel=1e-5)
    assert float(logged["train/generator_grad_norm"]) == pytest.approx(norms.rows[-2][1], rel=1e-5)
