"""DMD loss, critic loss and the step-seeded draws, checked against hand-made tensors and formulas."""
import pytest
import torch
from torch import nn

from lit_avatar.diffusion import SigmaSampler
from lit_avatar.models.dit import ClipConditions
from lit_avatar.modules.critic import critic_flow_loss
from lit_avatar.modules.dmd import DMDLoss, dmd_gradient, dmd_surrogate
from lit_avatar.modules.self_forcing import draw_exit_steps
from lit_avatar.seeding import step_generator


def test_dmd_gradient_matches_reference_formula_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2, 1)
    real = torch.tensor([[0.0, 2.0, 2.0, 4.0], [1.0, -1.0, 2.0, 0.0]]).reshape(2, 1, 2, 2, 1)
    fake = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 4.0]]).reshape(2, 1, 2, 2, 1)
    # sample 0: mean|x - real| = (1 + 0 + 1 + 0) / 4 = 0.5; sample 1: (1 + 1 + 2 + 0) / 4 = 1
    expected = torch.tensor([[2.0, -2.0, -2.0, -6.0], [-1.0, 1.0, -2.0, 4.0]]).reshape(2, 1, 2, 2, 1)
    torch.testing.assert_close(dmd_gradient(x, real, fake), expected)
    # a sample equal to the teacher's estimate: 0/0 -> no push
    assert dmd_gradient(real, real, real).abs().sum() == 0


def test_surrogate_loss_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2, 2, 2, generator=g, requires_grad=True)
    grad = torch.randn(2, 3, 2, 2, 2, generator=g)
    loss = dmd_surrogate(x, grad)
    assert loss.item() == pytest.approx(0.5 * grad.pow(2).mean().item(), rel=1e-5)
    loss.backward()
    torch.testing.assert_close(x.grad, grad / x.numel())  # d/dx 0.5 mean((x - sg(x - grad))^2)


class FixedX0(nn.Module):
    """A score whose clean estimate x0 = x_t - s v is a fixed tensor, whatever the noise level and noise:
    `with_audio` when the audio is not null, `without_audio` when it is. Records its calls."""

    def __init__(self, with_audio, without_audio):
        super().__init__()
        self.with_audio, self.without_audio = with_audio, without_audio
        self.calls = []

    def forward(self, x, timestep, audio=None, ref=None, text=None):
        self.calls.append({"t": timestep.clone(), "audio": audio, "ref": ref})
        target = self.with_audio if audio is not None and audio.abs().sum() > 0 else self.without_audio
        return (x - target) / (timestep / 1000).reshape(-1, 1, 1, 1, 1)


def test_dmd_loss_uses_cfg_real_score_and_critic_fake_score_in_x0_space():
    """A hand-worked example: the real score's x0 is cond + g (cond - uncond) in x0 space, the push is
    (fake - real) / mean|x - real|, and the surrogate's gradient is that push over x.numel()."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 2, 2).requires_grad_()
    conds = ClipConditions(audio=torch.ones(1, 1, 5, 4), ref=torch.full((1, 2, 1, 2, 2), 2.0), text=None)
    as_x = lambda *v: torch.tensor(v).reshape(1, 1, 1, 2, 2)  # noqa: E731
    teacher = FixedX0(with_audio=as_x(1.0, 1.0, 1.0, 1.0), without_audio=as_x(0.0, 1.0, 2.0, 1.0))
    critic = FixedX0(with_audio=as_x(2.0, 2.0, 2.0, 2.0), without_audio=None)
    out = DMDLoss(guidance_scale=3.0)(x, teacher, critic, conds, generator=torch.Generator().manual_seed(7))
    # real = cond + 3 (cond - uncond) = 1 + 3 * (1, 0, -1, 0) = (4, 1, -2, 1)
    torch.testing.assert_close(out.pred_real, as_x(4.0, 1.0, -2.0, 1.0))
    torch.testing.assert_close(out.pred_fake, as_x(2.0, 2.0, 2.0, 2.0))
    # mean|x - real| = (3 + 1 + 5 + 3) / 4 = 3; push = (fake - real) / 3 = (-2, 1, 4, 1) / 3
    torch.testing.assert_close(out.grad, as_x(-2.0, 1.0, 4.0, 1.0) / 3)
    # surrogate 0.5 * mean(push^2) = 0.5 * (4 + 1 + 16 + 1) / 9 / 4 = 11 / 36
    assert out.loss.item() == pytest.approx(11 / 36)
    out.loss.backward()
    torch.testing.assert_close(x.grad, as_x(-2.0, 1.0, 4.0, 1.0) / 12)
    # the unconditional pass nulls the audio and keeps the reference; both scores see the drawn level
    assert teacher.calls[1]["audio"].abs().sum() == 0 and teacher.calls[1]["ref"] is conds.ref
    assert 20 <= teacher.calls[0]["t"].item() <= 980
    assert teacher.calls[0]["t"].item() == pytest.approx(out.sigma.item() * 1000)
    assert critic.calls[0]["t"].item() == pytest.approx(out.sigma.item() * 1000)


def test_dmd_timesteps_are_shifted_uniform_and_clamped():
    loss_fn = DMDLoss(shift=5.0, min_timestep=20, max_timestep=980)
    s = loss_fn.sigma_sampler(20000, generator=torch.Generator().manual_seed(0))
    assert s.min() >= 0.02 and s.max() <= 0.98
    # median of shift-5 warped U(0,1): 5*0.5/(1+4*0.5) = 0.8333
    assert s.median().item() == pytest.approx(5 * 0.5 / 3, abs=0.01)
    assert (s == 0.98).float().mean().item() == pytest.approx(1 - 0.98 / (5 - 4 * 0.98), abs=0.01)


def test_critic_flow_loss_is_zero_for_the_true_velocity():
    samples = torch.randn(2, 3, 2, 4, 4)
    sampler = SigmaSampler("uniform", shift=5.0, min_sigma=0.02, max_sigma=0.98)

    class Oracle(nn.Module):
        def forward(self, x, timestep, audio=None, ref=None, text=None):
            s = (timestep / 1000).reshape(-1, 1, 1, 1, 1)
            eps = (x - (1 - s) * samples) / s
            return eps - samples

    conds = ClipConditions(None, None, None)
    assert critic_flow_loss(Oracle(), samples, conds, sampler, torch.Generator().manual_seed(0)).item() < 1e-8
    critic = nn.Conv3d(3, 3, 1)

    def wrapped(x, t, **kw):
        return critic(x)

    loss = critic_flow_loss(wrapped, samples.requires_grad_(), conds, sampler, torch.Generator().manual_seed(0))
    loss.backward()
    assert critic.weight.grad.abs().sum() > 0 and samples.grad is None  # samples are detached


def test_exit_steps_are_uniform_shared_and_step_seeded():
    a = draw_exit_steps([8, 4, 4], True, step_generator(3, 10, stream=0))
    b = draw_exit_steps([8, 4, 4], True, step_generator(3, 10, stream=0))
    assert a == b and a[1] == a[2] and 0 <= a[0] < 8 and a[1] == a[0] // 2
    counts = torch.zeros(4)
    for step in range(2000):
        e = draw_exit_steps([4, 4], False, step_generator(0, step))
        counts[e[0]] += 1
    assert (counts / 2000 - 0.25).abs().max() < 0.04
    draws = {tuple(draw_exit_steps([4, 4, 4], False, step_generator(0, s))) for s in range(50)}
    assert any(len(set(d)) > 1 for d in draws)  # per-block draws differ between blocks
