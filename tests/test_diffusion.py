"""Flow-matching pieces: conventions, schedule parity with diffusers, PSB subsets, Euler exactness, CFG."""
import math

import pytest
import torch

from lit_avatar.diffusion import (
    AvatarGuidance,
    SigmaSampler,
    add_noise,
    cfg,
    chained_cfg,
    noise_from_velocity,
    psb_step_lists,
    sample_euler,
    shift_sigma,
    shifted_schedule,
    subset_indices,
    velocity_target,
    x0_from_velocity,
)


def test_add_noise_endpoints_and_per_frame_levels():
    x0, eps = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(add_noise(x0, eps, 0.0), x0)
    assert torch.equal(add_noise(x0, eps, torch.ones(2)), eps)
    s = torch.tensor([[0.0, 0.5, 1.0, 0.25], [1.0, 1.0, 0.0, 0.0]])
    xs = add_noise(x0, eps, s)
    for b in range(2):
        for f in range(4):
            expect = (1 - s[b, f]) * x0[b, :, f] + s[b, f] * eps[b, :, f]
            torch.testing.assert_close(xs[b, :, f], expect)


def test_velocity_inverts_noising():
    x0, eps = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3)
    s = torch.tensor([0.1, 0.5, 0.9])
    xs = add_noise(x0, eps, s)
    v = velocity_target(x0, eps)
    torch.testing.assert_close(x0_from_velocity(xs, v, s), x0)
    torch.testing.assert_close(noise_from_velocity(xs, v, s), eps)


def test_shift_sigma_fixed_points_and_monotone():
    s = torch.linspace(0, 1, 101)
    out = shift_sigma(s, 5.0)
    assert out[0] == 0 and out[-1] == 1
    assert torch.all(out[1:] > out[:-1])
    assert torch.all(out[1:-1] > s[1:-1])  # k > 1 moves mass to high noise
    torch.testing.assert_close(shift_sigma(s, 1.0), s)
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)


@pytest.mark.parametrize("n,shift", [(4, 1.0), (8, 5.0), (30, 3.0), (1, 5.0)])
def test_shifted_schedule_matches_diffusers(n, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(n)
    ours = shifted_schedule(n, shift, last_sigma=shift_sigma(1 / 1000, shift))
    torch.testing.assert_close(ours, ref.sigmas.float(), atol=1e-6, rtol=1e-5)


def test_shifted_schedule_default_matches_self_forcing_steps():
    # REFERENCE.md: [1000, 750, 500, 250] warped through the shift-5 schedule is about [1000, 937, 833, 625]
    sig = shifted_schedule(4, 5.0)
    assert sig[-1] == 0 and sig[0] == 1
    assert [round(v) for v in (sig[:-1] * 1000).tolist()] == [1000, 938, 833, 625]


def test_subset_indices_include_ends_and_increase():
    for total in range(1, 12):
        for n in range(1, total + 1):
            idx = subset_indices(total, n)
            assert idx[0] == 0 and idx[-1] == total and len(idx) == n + 1
            assert all(b > a for a, b in zip(idx, idx[1:]))
    assert subset_indices(8, 4) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError):
        subset_indices(4, 5)


def test_psb_lists_come_from_one_schedule():
    lists = psb_step_lists([8, 6, 4], shift=5.0, num_blocks=5)
    assert [len(x) - 1 for x in lists] == [8, 6, 4, 4, 4]
    full = shifted_schedule(8, 5.0)
    for sig in lists:
        assert all(bool((full == v).any()) for v in sig)  # every level is an entry of the shared schedule
        assert sig[0] == 1 and sig[-1] == 0
    torch.testing.assert_close(lists[0], full)
    off = psb_step_lists([4], shift=5.0, num_blocks=3)
    assert all(torch.equal(x, shifted_schedule(4, 5.0)) for x in off)


def test_euler_is_exact_on_straight_paths():
    # The ideal velocity of one data point: v = eps - x0 is constant along the path, so any schedule is exact.
    x0, eps = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    calls = []

    def denoiser(x, s):
        calls.append(s.clone())
        assert s.shape == (2,)
        return velocity_target(x0, eps)

    out = sample_euler(denoiser, eps, shifted_schedule(3, 5.0))
    torch.testing.assert_close(out, x0)
    assert len(calls) == 3 and calls[0].tolist() == [1.0, 1.0]


def test_euler_recovers_gaussian_mean_with_model_velocity():
    # Data ~ delta at m: the exact marginal velocity at x_s is (x_s - m) / s; from s=1 the flow ends at m.
    m = torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1, 1)

    def denoiser(x, s):
        return (x - m) / s.reshape(-1, 1, 1, 1, 1)

    out = sample_euler(denoiser, torch.randn(4, 2, 1, 2, 2), shifted_schedule(5, 3.0))
    torch.testing.assert_close(out, m.expand_as(out))


def test_cfg_and_chained_cfg():
    c, u = torch.tensor([3.0]), torch.tensor([1.0])
    assert cfg(c, u, 1.0).item() == 3.0 and cfg(c, u, 0.0).item() == 1.0 and cfg(c, u, 2.5).item() == 6.0
    null, ref, full = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([3.0])
    assert chained_cfg([null, ref, full], [2.0, 3.0]).item() == pytest.approx(2.0 * 1 + 3.0 * 2)
    assert chained_cfg([u, c], [2.5]).item() == cfg(c, u, 2.5).item()
    with pytest.raises(ValueError):
        chained_cfg([null, ref], [1.0, 2.0])


class _Recorder(torch.nn.Module):
    """Velocity = sum of which conditions are non-null, so the guidance arithmetic can be checked."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, timestep, audio=None, ref=None, text=None):
        self.calls.append((audio is not None and bool(audio.abs().sum() > 0),
                           ref is not None and bool(ref.abs().sum() > 0)))
        a = 10.0 if self.calls[-1][0] else 0.0
        r = 1.0 if self.calls[-1][1] else 0.0
        return torch.full_like(x, a + r) + 0 * timestep.reshape(-1, 1, 1, 1, 1)


def test_avatar_guidance_passes_and_values():
    x, s = torch.zeros(2, 1, 1, 1, 1), torch.full((2,), 0.5)
    audio, ref = torch.ones(2, 4, 5, 3), torch.ones(2, 1, 1, 1, 1)
    model = _Recorder()
    v = AvatarGuidance(1.0, 1.0).denoiser(model, audio, ref)(x, s)
    assert len(model.calls) == 1 and v.flatten()[0] == 11.0
    model = _Recorder()
    v = AvatarGuidance(audio_scale=3.0, ref_scale=1.0).denoiser(model, audio, ref)(x, s)
    assert len(model.calls) == 2 and v.flatten()[0] == pytest.approx(1 + 3 * 10)
    model = _Recorder()
    v = AvatarGuidance(audio_scale=3.0, ref_scale=2.0).denoiser(model, audio, ref)(x, s)
    assert len(model.calls) == 3 and v.flatten()[0] == pytest.approx(2 * 1 + 3 * 10)


def test_sigma_sampler_distributions():
    g = torch.Generator().manual_seed(0)
    uni = SigmaSampler("uniform")(20000, generator=g)
    assert uni.shape == (20000,) and 0 <= uni.min() and uni.max() <= 1
    assert uni.mean().item() == pytest.approx(0.5, abs=0.02)
    shifted = SigmaSampler("uniform", shift=5.0)(20000, generator=g)
    # E[shift_5(U)] = integral of 5u/(1+4u) du = 5/4 (1 - ln(5)/4)
    assert shifted.mean().item() == pytest.approx(1.25 * (1 - math.log(5) / 4), abs=0.02)
    ln = SigmaSampler("logit_normal", loc=0.0, scale=1.0)(20000, generator=g)
    assert ln.median().item() == pytest.approx(0.5, abs=0.02)
    assert ((ln > 0.25) & (ln < 0.75)).float().mean() > ((uni > 0.25) & (uni < 0.75)).float().mean()
    clamped = SigmaSampler("uniform", min_sigma=0.02, max_sigma=0.98)(1000, generator=g)
    assert clamped.min() >= 0.02 and clamped.max() <= 0.98
    with pytest.raises(ValueError):
        SigmaSampler("cosine")
