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

    def forward(self, x, timestep, audio=None, ref=None, text=None, frames_per_block=None):
        out = self.conv(x)
        self.calls.append({"t": timestep.detach().clone(), "fpb": frames_per_block, "audio": audio,
                           "x": x.detach().clone(), "v": out.detach().clone()})
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
    assert call["fpb"] == 2 and call["t"].shape == (2, 4)
    t = call["t"] / 1000
    assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 2], t[:, 3])  # one level per block
    levels = psb_levels(OPTS.psb.steps, OPTS.shift)
    block1 = set(levels[[0, 2]].tolist())  # block 1: 2 steps of the same schedule (+ its clean end)
    seen = set()
    for seed in range(20):
        module.regression_loss(b, torch.Generator().manual_seed(seed))
        t1 = student.calls[-1]["t"][:, 2] / 1000
        seen |= set(t1[t1 > OPTS.mci.max + 1e-6].tolist())  # levels above the MCI range: trajectory states
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
    """(level, input, clean end) of the student's call for several level draws."""
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
        call = student.calls[-1]
        out.append((call["t"] / 1000, call["x"], clean))
    return out


def _conds(module, b):
    from lit_avatar.modules.conditions import clip_inputs

    return clip_inputs(b, module.vae, module.audio_encoder)[1]


def test_ode_init_draws_the_clean_level_as_context_and_leaves_it_out_of_the_loss():
    """CausVid: a block may sit at its trajectory's clean end; later blocks attend to it, the loss skips it."""
    levels = psb_levels(OPTS.psb.steps, OPTS.shift)
    clean_draws = 0
    for level, x, clean in _context_draws(mci_enabled=False):
        context = level == 0
        clean_draws += int(context.any())
        for i in range(level.shape[0]):
            torch.testing.assert_close(x[i][:, context[i]], clean[i][:, context[i]])  # the clean end itself
        assert set(level.flatten().tolist()) <= set(levels.tolist())
    assert clean_draws > 0  # over 16 draws the clean level comes up (block 1 has 3 levels)


def test_ode_init_context_sits_at_the_mci_level_when_mci_is_on():
    """With MCI the inference cache holds the clean output corrupted to s_m: the draw trains that input."""
    trajectory_levels = set(psb_levels(OPTS.psb.steps, OPTS.shift).tolist())
    seen_context = 0
    for level, x, clean in _context_draws(mci_enabled=True):
        context = torch.tensor([[lv not in trajectory_levels for lv in row] for row in level.tolist()])
        for i in range(level.shape[0]):
            s = level[i][context[i]]
            if not len(s):
                continue
            seen_context += 1
            assert ((s >= 0.05 - 1e-6) & (s <= 0.2 + 1e-6)).all()
            # the input is (1 - s) clean + s noise: it stays near the clean end, never on a trajectory state
            err = (x[i][:, context[i]] - clean[i][:, context[i]]).pow(2).mean()
            assert 0 < err < 0.2 ** 2 * 4
    assert seen_context > 0


class StraightTo(nn.Module):
    """Velocity of the straight path from x_t to `target` (x0 = x_t - s v = target at every level s > 0);
    at s = 0 it predicts the input itself. Records the per-frame levels of its calls."""

    def __init__(self, target):
        super().__init__()
        self.target, self.levels = target, []

    def forward(self, x, timestep, audio=None, ref=None, text=None, frames_per_block=None):
        s = timestep / 1000
        self.levels.append(s.detach().clone())
        s = s.reshape(*s.shape[:1], 1, *s.shape[1:], 1, 1) if s.ndim == 2 else s.reshape(-1, 1, 1, 1, 1)
        return torch.where(s > 0, (x - self.target) / s.clamp_min(1e-12), torch.zeros_like(x))


def test_ode_init_loss_by_hand():
    """Teacher ending at clean frames of value 0, 1, 2, 3 (frame f = f everywhere), student predicting 0:
    the loss is the mean of f^2 over the frames not drawn as context. Blocks are frames {0, 1} and {2, 3}:
    no context 14/4 = 3.5; block 0 as context (4 + 9)/2 = 6.5; block 1 as context (0 + 1)/2 = 0.5."""
    b = random_batch()
    vae = PatchVAE(2)
    shape = tuple(vae.encode(b["video"]).shape)  # [2, C, 4, h, w]
    clean = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(shape).contiguous()
    student = StraightTo(torch.zeros(shape))
    from dataclasses import replace

    from lit_avatar.inference.options import MCIOptions

    no_mci = replace(OPTS, mci=MCIOptions(enabled=False))  # context blocks sit at level 0
    module = ODEInitModule(student, StraightTo(clean), rollout=no_mci, vae=vae, audio_encoder=MelAudioEncoder(),
                           teacher_substeps=1, mouth_weight=1.0)
    by_hand = {(False, False): 3.5, (True, False): 6.5, (False, True): 0.5}
    seen = set()
    for seed in range(24):
        loss = module.regression_loss(b, torch.Generator().manual_seed(seed))
        context = student.levels[-1] == 0  # [B, t]
        per_sample = {(bool(c[0]), bool(c[2])) for c in context}
        if len(per_sample) == 1 and per_sample <= by_hand.keys():
            seen |= per_sample
            assert loss.item() == pytest.approx(by_hand[per_sample.pop()], rel=1e-3)
    assert len(seen) >= 2
