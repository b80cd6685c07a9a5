"""Frechet distance: the stable eigenvalue trace equals scipy's sqrtm formula; running sums equal the batch."""
import numpy as np
import pytest
import scipy.linalg

from eval.frechet import feature_stats, frechet_distance, frechet_distance_features, stats_from_sums


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


def _both_methods_match_scipy(mu1, s1, mu2, s2) -> None:
    ref = _scipy_reference(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("d,n", [(16, 200), (64, 300)])
def test_eig_trace_equals_sqrtm_formula(d, n):
    rng = np.random.default_rng(d)
    _both_methods_match_scipy(*_random_cov(rng, d, n), *_random_cov(rng, d, n))


def test_near_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances, as with few frames and 2048-d features
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 32))
    b = rng.standard_normal((20, 32)) + 0.5
    _both_methods_match_scipy(*feature_stats(a), *feature_stats(b))


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
