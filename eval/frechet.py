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

    S1 S2 is similar to the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so they share eigenvalues; computing
    them through the symmetric form uses two symmetric eigensolvers (about 6x faster than a general
    eigensolver at D=2048) and gives real values by construction. Small negatives from rounding are
    clamped. Falls back to `trace_sqrt_product_sqrtm` when the result is not finite.
    """
    s1 = np.asarray(sigma1, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    try:
        w, v = np.linalg.eigh(0.5 * (s1 + s1.T))
        root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        inner = root @ s2 @ root
        eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    except np.linalg.LinAlgError:
        return trace_sqrt_product_sqrtm(s1, s2)
    if not np.all(np.isfinite(eig)):
        return trace_sqrt_product_sqrtm(s1, s2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def trace_sqrt_product_features(a: np.ndarray, b: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) straight from the feature sets, exact and cheap when N < D.

    With S1 = A^T A and S2 = B^T B (A, B centred features over sqrt(N-1)), the non-zero eigenvalues of
    S1 S2 are those of (A B^T)(A B^T)^T, so the trace is the sum of the singular values of A B^T, an
    [N1, N2] matrix: few frames of 2048-d features cost a tiny SVD instead of a 2048x2048 eigenproblem.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ac = (a - a.mean(0)) / np.sqrt(a.shape[0] - 1)
    bc = (b - b.mean(0)) / np.sqrt(b.shape[0] - 1)
    return float(np.linalg.svd(ac @ bc.T, compute_uv=False).sum())


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
    """Frechet distance between two feature sets [N, D] and [M, D].

    With method "eig" and fewer vectors than dimensions on either side, the trace term comes from the
    features themselves (`trace_sqrt_product_features`): the same value, far cheaper.
    """
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    if method == "eig" and min(len(a), len(b)) < mu1.shape[0] and mu1.shape == mu2.shape:
        diff = mu1 - mu2
        d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product_features(a, b))
        return max(d, 0.0)
    return frechet_distance(mu1, s1, mu2, s2, method=method)
