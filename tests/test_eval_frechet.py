"""Frechet distance: the stable eigenvalue trace equals scipy's sqrtm formula; streaming metric equals batch."""
import numpy as np
import pytest
import scipy.linalg
import torch

from eval.frechet import feature_stats, frechet_distance, frechet_distance_features, stats_from_sums
from eval.metrics import FrechetFeatureMetric, SynthSyncMetric


def _scipy_reference(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_cov(rng, d, n):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    return x.mean(0), np.cov(x, rowvar=False)


def test_stats_match_numpy():
    x = np.random.default_rng(0).standard_normal((50, 7))
    mu, cov = feature_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-12)
    mu2, cov2 = stats_from_sums(x.sum(0), x.T @ x, 50)
    np.testing.assert_allclose(mu2, mu, rtol=1e-12)
    np.testing.assert_allclose(cov2, cov, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("d,n", [(16, 200), (64, 300)])
def test_eig_trace_equals_sqrtm_formula(d, n):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_cov(rng, d, n)
    mu2, s2 = _random_cov(rng, d, n)
    ref = _scipy_reference(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(ref, rel=1e-6)


def test_near_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances, as with few frames and 2048-d features
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 32))
    b = rng.standard_normal((20, 32)) + 0.5
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    ref = _scipy_reference(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(ref, rel=1e-6)


def test_feature_route_equals_covariance_route():
    # fewer vectors than dimensions on one side: the SVD shortcut must give the covariance-route value
    rng = np.random.default_rng(5)
    a = rng.standard_normal((10, 40))
    b = rng.standard_normal((60, 40)) * 0.7 + 0.2
    ref = frechet_distance(*feature_stats(a), *feature_stats(b), method="sqrtm")
    assert frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_features(b, a) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(*feature_stats(a), *feature_stats(b)) == pytest.approx(ref, rel=1e-6)


def test_identical_sets_zero_and_symmetric():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((100, 12))
    b = rng.standard_normal((80, 12)) * 2 + 1
    assert frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance_features(a, b) == pytest.approx(frechet_distance_features(b, a), rel=1e-10)
    # shifting one set by c adds |c|^2 exactly
    c = np.full(12, 0.5)
    assert frechet_distance_features(a, a + c) == pytest.approx(12 * 0.25, rel=1e-6)


def test_metric_two_halves_equal_one_update_and_match_frechet():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((60, 8))
    fake = rng.standard_normal((40, 8)) * 1.5 + 0.3
    m1 = FrechetFeatureMetric(None, 8)
    m1.update_features(torch.from_numpy(real), real=True)
    m1.update_features(torch.from_numpy(fake), real=False)
    m2 = FrechetFeatureMetric(None, 8)
    for half in np.split(real, 2):
        m2.update_features(torch.from_numpy(half).float(), real=True)
    for half in np.split(fake, [13]):
        m2.update_features(torch.from_numpy(half), real=False)
    ref = frechet_distance_features(real, fake)
    assert float(m1.compute()) == pytest.approx(ref, rel=1e-9)
    assert float(m2.compute()) == pytest.approx(float(m1.compute()), rel=1e-6)  # float32 input rounding
    assert m1.real_sum.dtype == torch.float64


def test_metric_with_extractor():
    proj = torch.nn.Linear(5, 4).double()
    m = FrechetFeatureMetric(proj, 4)
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randn(30, 5, dtype=torch.float64) + 1
    m.update(x, real=True)
    m.update(y, real=False)
    with torch.no_grad():
        ref = frechet_distance_features(proj(x).numpy(), proj(y).numpy())
    assert float(m.compute()) == pytest.approx(ref, rel=1e-9)


def test_synthsync_metric_mean_over_videos():
    from test_eval_synthsync import BOX, _audio_for, _draw, _signal
    from eval.synthsync import synthsync

    sigs = [_signal(40, s) for s in (0, 1)]
    frames = [_draw(s) for s in sigs]
    audio = [_audio_for(s) for s in sigs]
    video = torch.from_numpy(np.stack(frames)).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
    m = SynthSyncMetric()
    m.update(video[:1], torch.from_numpy(np.stack(audio[:1])), torch.tensor([BOX]))
    m.update(video[1:], torch.from_numpy(np.stack(audio[1:])), torch.tensor([BOX]))
    expect = np.mean([synthsync(f, BOX, a)["r"] for f, a in zip(frames, audio)])
    assert float(m.compute()["r"]) == pytest.approx(expect, abs=1e-3)


def test_feature_pool_routes_agree():
    from eval.scorers import FeaturePool

    rng = np.random.default_rng(7)
    real, fake = rng.standard_normal((30, 6)), rng.standard_normal((25, 6)) + 0.4
    small, big = FeaturePool(6, keep=1000), FeaturePool(6, keep=10)  # big drops raw rows: sums route
    for pool in (small, big):
        for part in np.split(real, 3):
            pool.add(part, real=True)
        pool.add(fake, real=False)
    ref = frechet_distance_features(fake, real)
    assert small.distance() == pytest.approx(ref, rel=1e-9)
    assert big.rows[True] is None and big.distance() == pytest.approx(ref, rel=1e-6)


def test_video_batch_helpers():
    from eval.fvd import preprocess_clip
    from eval.metrics import video_batch_to_clips, video_batch_to_images

    video = torch.rand(2, 3, 20, 8, 12) * 2 - 1
    images = video_batch_to_images(video)
    assert images.shape == (40, 3, 8, 12)
    torch.testing.assert_close(images[21], (video[1, :, 1] + 1) / 2)  # sample 1, frame 1
    clips = video_batch_to_clips(video)
    assert clips.shape == (2, 3, 16, 224, 224)  # one whole 16-frame clip per 20-frame sample
    ref = preprocess_clip(((video[1, :, :16] + 1) / 2).permute(1, 2, 3, 0).numpy())
    torch.testing.assert_close(clips[1], ref, rtol=1e-5, atol=1e-5)


def test_metric_states_merge_like_ddp():
    """Two processes' states reduced by sum (what dist_reduce_fx='sum' does) give the one-process value."""
    rng = np.random.default_rng(11)
    real, fake = torch.from_numpy(rng.standard_normal((40, 5))), torch.from_numpy(rng.standard_normal((30, 5)) + 1)
    a, b, whole = FrechetFeatureMetric(None, 5), FrechetFeatureMetric(None, 5), FrechetFeatureMetric(None, 5)
    a.update_features(real[:25], True)
    a.update_features(fake[:10], False)
    b.update_features(real[25:], True)
    b.update_features(fake[10:], False)
    whole.update_features(real, True)
    whole.update_features(fake, False)
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(float(whole.compute()), rel=1e-9)
    from torchmetrics.utilities.data import dim_zero_sum

    assert all(a._reductions[n] is dim_zero_sum for n in a._defaults)
    assert all(a._defaults[n].dtype in (torch.float64, torch.long) for n in a._defaults)
