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


class LinearScore(nn.Module):
    """v = a * x + b * audio_mean + c * ref: simple enough to predict every output by hand."""

    def __init__(self, a, b, c):
        super().__init__()
        self.a, self.b, self.c = a, b, c
        self.calls = []

    def forward(self, x, timestep, audio=None, ref=None, text=None):
        self.calls.append({"t": timestep.clone(), "audio": audio, "ref": ref})
        out = self.a * x
        if audio is not None:
            out = out + self.b * audio.mean()
        if ref is not None:
            out = out + self.c * ref.mean()
        return out


def test_dmd_loss_uses_cfg_real_score_and_critic_fake_score_in_x0_space():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 2, 2, 2, generator=g, requires_grad=True)
    conds = ClipConditions(audio=torch.ones(3, 2, 5, 4), ref=torch.full((3, 2, 1, 2, 2), 2.0), text=None)
    teacher, critic = LinearScore(0.5, 1.0, 0.1), LinearScore(0.3, 0.0, 0.0)
    loss_fn = DMDLoss(guidance_scale=3.0)
    out = loss_fn(x, teacher, critic, conds, generator=torch.Generator().manual_seed(7))
    # replay the draws
    rg = torch.Generator().manual_seed(7)
    sigma = loss_fn.sigma_sampler(3, generator=rg)
    noise = torch.randn(x.shape, generator=rg)
    s = sigma.reshape(-1, 1, 1, 1, 1)
    xt = (1 - s) * x.detach() + s * noise
    v_cond = 0.5 * xt + 1.0 + 0.1 * 2.0
    v_uncond = 0.5 * xt + 0.1 * 2.0  # null audio only; the reference stays
    real = xt - s * (v_cond + 3.0 * (v_cond - v_uncond))
    fake = xt - s * (0.3 * xt)
    torch.testing.assert_close(out.pred_real, real)
    torch.testing.assert_close(out.pred_fake, fake)
    torch.testing.assert_close(out.grad, (fake - real) / (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True))
    assert teacher.calls[1]["audio"].abs().sum() == 0 and teacher.calls[1]["ref"] is conds.ref
    assert torch.allclose(teacher.calls[0]["t"], sigma * 1000)
    out.loss.backward()
    torch.testing.assert_close(x.grad, out.grad / x.numel())


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
