"""Frechet distance between Gaussians fitted to feature sets (FID, FVD, per-window drift).

Everything is float64: with 2048-d features, float32 covariances lose enough precision to move FID by
whole points.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from lit_avatar.errors import UserError

# how large the imaginary part of sqrtm may get before the result is declared garbage
MAX_IMAG = 1e-3


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (N-1) covariance of features [N, D], float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"features: expected at least 2 feature vectors [N>=2, D], got shape {x.shape}")
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def stats_from_sums(total: np.ndarray, outer: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and N-1 covariance from running sums (sum x, sum x x^T, N): what a streaming metric stores.

    Args:
        total: sum of feature vectors [D].
        outer: sum of outer products [D, D].
        count: number of vectors N (>= 2).
    """
    if count < 2:
        raise UserError(f"features: need at least 2 feature vectors for a covariance, got {count}")
    total = np.asarray(total, dtype=np.float64)
    mu = total / count
    cov = (np.asarray(outer, dtype=np.float64) - count * np.outer(mu, mu)) / (count - 1)
    return mu, 0.5 * (cov + cov.T)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) as the sum of square roots of the eigenvalues of S1 S2.

    S1 S2 is similar to the PSD matrix S1^(1/2) S2 S1^(1/2), so its eigenvalues are real and >= 0 up to
    rounding: take the real part and clamp small negatives. Falls back to `trace_sqrt_product_sqrtm` when
    the eigen-solver returns non-finite values.
    """
    eig = np.linalg.eigvals(np.asarray(sigma1, np.float64) @ np.asarray(sigma2, np.float64))
    if not np.all(np.isfinite(eig)):
        return trace_sqrt_product_sqrtm(sigma1, sigma2)
    return float(np.sqrt(np.clip(eig.real, 0.0, None)).sum())


def trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Tr((S1 S2)^(1/2)) by scipy.linalg.sqrtm, as pytorch-fid computes it.

    When sqrtm is not finite (singular product), `eps * I` is added to both covariances; an imaginary part
    larger than MAX_IMAG means the covariances are unusable and raises ValueError.
    """
    s1 = np.asarray(sigma1, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > MAX_IMAG:
            raise ValueError(f"sqrtm has an imaginary component of {imag:.3g} (> {MAX_IMAG}); covariances unusable")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eig"
) -> float:
    """Squared Frechet distance |mu1-mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).

    Args:
        mu1, sigma1: mean [D] and covariance [D, D] of the first set.
        mu2, sigma2: mean and covariance of the second set.
        method: "eig" (stable eigenvalue trace, default) or "sqrtm" (scipy's matrix square root).

    Returns:
        the distance, clamped at 0 (rounding can make identical sets slightly negative).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UserError(
            f"features: dimensions differ (mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape})"
        )
    if method == "eig":
        tr = trace_sqrt_product(sigma1, sigma2)
    elif method == "sqrtm":
        tr = trace_sqrt_product_sqrtm(sigma1, sigma2)
    else:
        raise UserError(f"method: expected 'eig' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr)
    return max(d, 0.0)


def frechet_distance_features(a: np.ndarray, b: np.ndarray, method: str = "eig") -> float:
    """Frechet distance between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*feature_stats(a), *feature_stats(b), method=method)
