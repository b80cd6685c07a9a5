"""ODE init: teacher trajectories at the student's levels, block-causal regression, trajectory cache."""
import pytest
import torch
from batches import random_batch
from torch import nn

from lit_avatar.diffusion import AvatarGuidance, psb_levels, sample_euler, shifted_schedule
from lit_avatar.inference.options import PSBOptions, RolloutOptions, URCROptions
from lit_avatar.models.audio import MelAudioEncoder
from lit_avatar.models.dit import ClipConditions
from lit_avatar.models.vae import PatchVAE
from lit_avatar.modules.ode_init import ODEInitModule, teacher_trajectory
from lit_avatar.modules.optim import LinearWarmup

OPTS = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[4, 2]), urcr=URCROptions(max_frames=6, keep_frames=2))


class Recorder(nn.Module):
    """A tiny velocity model that records its calls (timesteps, block size)."""

    def __init__(self, channels=12):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 1)
        self.calls = []

    def forward(self, x, timestep, audio=None, ref=None, text=None, frames_per_block=None, window=None, context=None,
                context_timestep=None):
        out = self.conv(x)
        self.calls.append({"t": timestep.detach().clone(), "fpb": frames_per_block, "audio": audio,
                           "x": x.detach().clone(), "v": out.detach().clone(), "window": window,
                           "context": None if context is None else context.detach().clone(),
                           "context_t": None if context_timestep is None else context_timestep.detach().clone()})
        return out



def test_trajectory_states_sit_on_the_student_levels_and_end_at_the_full_ode_solution():
    teacher = Recorder()
    noise = torch.randn(1, 12, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    conds = ClipConditions(None, None, None)
    traj = teacher_trajectory(teacher, AvatarGuidance(), conds, noise, OPTS, substeps=3)
    assert traj.shape == (5, 1, 12, 4, 4, 4) and torch.equal(traj[0], noise)
    fine = shifted_schedule(12, OPTS.shift)
    # the fine grid contains the student levels
    torch.testing.assert_close(fine[::3], psb_levels(OPTS.psb.steps, OPTS.shift))
    levels_seen = sorted({round(c["t"][0].item(), 3) for c in teacher.calls}, reverse=True)
    assert len(levels_seen) == 12  # 4 student steps x 3 teacher substeps
    full = sample_euler(lambda x, s: teacher(x, s * 1000), noise, fine)
    torch.testing.assert_close(traj[-1], full)
    half = sample_euler(lambda x, s: teacher(x, s * 1000), noise, fine[:7])
    torch.testing.assert_close(traj[2], half)


def test_trajectory_of_an_exact_teacher_reaches_its_target():
    target = torch.randn(2, 12, 2, 4, 4)

    class Exact(nn.Module):
        def forward(self, x, timestep, audio=None, ref=None, text=None):
            s = (timestep / 1000).reshape(-1, 1, 1, 1, 1)
            return (x - target) / s  # the straight path from x to target

    traj = teacher_trajectory(Exact(), AvatarGuidance(), ClipConditions(None, None, None), torch.randn(2, 12, 2, 4, 4),
                              OPTS, substeps=2)
    torch.testing.assert_close(traj[-1], target, atol=1e-4, rtol=1e-4)


def test_regression_is_block_causal_with_per_block_student_levels_and_caches(tmp_path):
    student, teacher = Recorder(), Recorder()
    module = ODEInitModule(student, teacher, rollout=OPTS, vae=PatchVAE(2), audio_encoder=MelAudioEncoder(),
                           teacher_substeps=2, cache_dir=str(tmp_path), audio_guidance=1.0)
    b = random_batch()
    loss = module.regression_loss(b, torch.Generator().manual_seed(0))
    loss.backward()
    assert student.conv.weight.grad.abs().sum() > 0 and teacher.conv.weight.grad is None
    call = student.calls[-1]
    assert call["fpb"] == 2 and call["t"].shape == (2, 4) and call["window"] == OPTS.window
    assert call["context"].shape == call["x"].shape
    t = call["t"] / 1000
    assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 2], t[:, 3])  # one level per block
    levels = psb_levels(OPTS.psb.steps, OPTS.shift)
    block1 = set(levels[[0, 2]].tolist())  # block 1: 2 steps of the same schedule (its clean end is the target)
    seen = set()
    for seed in range(20):
        module.regression_loss(b, torch.Generator().manual_seed(seed))
        seen |= set((student.calls[-1]["t"][:, 2] / 1000).tolist())
    assert seen == block1
    # the trajectory cache: one file per sample, and no teacher call once cached
    assert len(list(tmp_path.glob("*.pt"))) == 2
    n = len(teacher.calls)
    module.regression_loss(b)
    assert len(teacher.calls) == n


def test_fit_two_steps_with_a_micro_dit_and_record(tmp_path):
    import lightning.pytorch as pl

    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset

    cfg = get_preset("micro", audio_feature_dim=40)
    torch.manual_seed(0)
    module = ODEInitModule(AvatarDiT(config=cfg), AvatarDiT(config=cfg), rollout=OPTS, vae=PatchVAE(2),
                           audio_encoder=MelAudioEncoder(), teacher_substeps=1,
                           lr_scheduler=lambda optimizer: LinearWarmup(optimizer, warmup_steps=1))
    before = [p.clone() for p in module.generator.parameters()]
    loader = torch.utils.data.DataLoader([random_batch(seed=i) for i in range(2)], batch_size=None)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    assert any(not torch.equal(a, p) for a, p in zip(before, module.generator.parameters()))
    trainer.save_checkpoint(tmp_path / "ode.ckpt")
    ckpt = torch.load(tmp_path / "ode.ckpt", weights_only=True)
    assert ckpt["lit_avatar"]["kind"] == "ode_init" and ckpt["lit_avatar"]["weights_prefix"] == "generator_ema."
    from lit_avatar.checkpoint import load_generator

    bundle = load_generator(str(tmp_path / "ode.ckpt"))
    assert isinstance(bundle.model, AvatarDiT) and not bundle.model.training
    # the record points at the EMA weights, not at the trained ones
    assert not torch.equal(module.generator_ema.head.head.weight, module.generator.head.head.weight)
    torch.testing.assert_close(dict(bundle.model.named_parameters())["head.head.weight"],
                               module.generator_ema.head.head.weight)


def _context_draws(mci_enabled, seeds=range(16)):
    """(call, clean end) of the student's call for several level draws."""
    from dataclasses import replace

    from lit_avatar.inference.options import MCIOptions
    opts = replace(OPTS, mci=MCIOptions(enabled=mci_enabled, min=0.05, max=0.2))
    student = Recorder()
    module = ODEInitModule(student, Recorder(), rollout=opts, vae=PatchVAE(2), audio_encoder=MelAudioEncoder(),
                           teacher_substeps=1, mouth_weight=1.0)
    b = random_batch()
    clean = module.trajectories(b, tuple(module.vae.encode(b["video"]).shape), _conds(module, b))[-1]
    out = []
    for seed in seeds:
        module.regression_loss(b, torch.Generator().manual_seed(seed))
        out.append((student.calls[-1], clean))
    return out


def _conds(module, b):
    from lit_avatar.modules.conditions import clip_inputs

    return clip_inputs(b, module.vae, module.audio_encoder)[1]


def test_ode_init_context_is_the_clean_end_as_the_cache_holds_it_without_mci():
    """Every block starts from a trajectory state (never its clean end) and reads its context from the clean
    end at s = 0, the level the cache holds without MCI; the loss covers every frame."""
    levels = set(psb_levels(OPTS.psb.steps, OPTS.shift)[:-1].tolist())
    for call, clean in _context_draws(mci_enabled=False):
        assert set((call["t"] / 1000).flatten().tolist()) <= levels
        torch.testing.assert_close(call["context"], clean)
        assert torch.equal(call["context_t"], torch.zeros_like(call["context_t"]))


def test_ode_init_context_sits_at_the_mci_level_when_mci_is_on():
    """With MCI the inference cache holds the clean output corrupted to s_m: the context copy is that input."""
    for call, clean in _context_draws(mci_enabled=True):
        s = call["context_t"] / 1000
        assert ((s >= 0.05 - 1e-6) & (s <= 0.2 + 1e-6)).all()
        assert torch.equal(s[:, 0], s[:, 1]) and torch.equal(s[:, 2], s[:, 3])  # one level per block
        # the context is (1 - s) clean + s noise: near the clean end, never on it
        err = (call["context"] - clean).pow(2).mean()
        assert 0 < err < 0.2 ** 2 * 4


class StraightTo(nn.Module):
    """Velocity of the straight path from x_t to `target` (x0 = x_t - s v = target at every level s > 0).
    Records the per-frame levels of its calls."""

    def __init__(self, target):
        super().__init__()
        self.target, self.levels = target, []

    def forward(self, x, timestep, audio=None, ref=None, text=None, frames_per_block=None, window=None,
                context=None, context_timestep=None):
        s = timestep / 1000
        self.levels.append(s.detach().clone())
        s = s.reshape(*s.shape[:1], 1, *s.shape[1:], 1, 1) if s.ndim == 2 else s.reshape(-1, 1, 1, 1, 1)
        return (x - self.target) / s


@pytest.mark.parametrize("offset, by_hand", [(None, 3.5), (2.0, 4.0), (0.0, 0.0)])
def test_ode_init_loss_by_hand(offset, by_hand):
    """Teacher ending at clean frames of value 0, 1, 2, 3 (frame f = f everywhere); the student's clean estimate
    is its target: 0 everywhere gives the mean of f^2 = 14/4 = 3.5, clean + 2 gives 4, clean itself 0. Every
    frame counts (the context is a separate copy), whatever level each block draws."""
    b = random_batch()
    vae = PatchVAE(2)
    shape = tuple(vae.encode(b["video"]).shape)  # [2, C, 4, h, w]
    clean = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(shape).contiguous()
    student = StraightTo(torch.zeros(shape) if offset is None else clean + offset)
    module = ODEInitModule(student, StraightTo(clean), rollout=OPTS, vae=vae, audio_encoder=MelAudioEncoder(),
                           teacher_substeps=1, mouth_weight=1.0)
    for seed in range(4):
        loss = module.regression_loss(b, torch.Generator().manual_seed(seed))
        assert (student.levels[-1] > 0).all()  # every block starts from a trajectory state, never the clean end
        assert loss.item() == pytest.approx(by_hand, abs=1e-4)


def test_a_changed_sampling_setting_never_reads_the_old_trajectories(tmp_path):
    """The trajectory cache key holds the guidance scales (and substeps, negative prompt, step lists): a run with
    another audio guidance samples again instead of training on trajectories made under the old scale."""
    def module(**settings):
        teacher = Recorder()
        args = {"teacher_substeps": 2, "audio_guidance": 1.0, **settings}
        return ODEInitModule(Recorder(), teacher, rollout=OPTS, vae=PatchVAE(2), audio_encoder=MelAudioEncoder(),
                             cache_dir=str(tmp_path), **args), teacher

    b = random_batch()
    first, _ = module()
    first.regression_loss(b)
    same, teacher = module()
    same.regression_loss(b)
    assert teacher.calls == [] and len(list(tmp_path.glob("*.pt"))) == 2
    for other in ({"audio_guidance": 3.0}, {"teacher_substeps": 3}, {"ref_guidance": 2.0}):
        changed, teacher = module(**other)
        changed.regression_loss(b)
        assert teacher.calls, other
    assert len(list(tmp_path.glob("*.pt"))) == 8
