"""Means with 95% confidence intervals over seeds, and whether a variant differs from the baseline.

An ablation trains every variant with the same seeds (same data order, same evaluation noise), so a
variant's seed s is paired with the baseline's seed s: the difference per seed removes what the seeds
share, and its Student-t interval says whether the variant differs beyond seed-to-seed variation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided confidence interval [low, high] of n values (low = high = mean when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    def excludes(self, value: float = 0.0) -> bool:
        return self.n >= 2 and not (self.low <= value <= self.high)


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], np.float64)
    return v[np.isfinite(v)]


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean: mean +- t_{(1+level)/2, n-1} * s / sqrt(n), s with ddof=1."""
    from scipy.stats import t as student_t

    v = _finite(values)
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if v.size < 2:
        return Interval(mean, mean, mean, int(v.size))
    half = float(student_t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return Interval(mean, mean - half, mean + half, int(v.size))


def paired_difference(variant: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Interval:
    """Interval of the mean per-seed difference variant - baseline (pairs with a missing side are dropped)."""
    pairs = [(a, b) for a, b in zip(variant, baseline)
             if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
    return mean_ci([a - b for a, b in pairs], level)


def summarize(per_seed: dict[str, dict[str, list[float]]], baseline: str | dict[str, str],
              level: float = 0.95) -> dict[str, dict]:
    """{variant: {metric: [value per seed]}} -> {variant: aggregate} for the results JSON.

    Each metric gets `metric` (mean), `metric_ci95` ([low, high]), `metric_n`, and for variants other than
    the baseline `metric_diff` (mean paired difference to it), `metric_diff_ci95` and `metric_differs`
    (True when that interval excludes 0). `baseline` is one variant for all, or {variant: its baseline}
    for tables of pairs (a variant not named there gets no difference).
    """
    pairs = baseline if isinstance(baseline, dict) else {v: baseline for v in per_seed if v != baseline}
    out: dict[str, dict] = {}
    for variant, metrics in per_seed.items():
        base = per_seed.get(pairs.get(variant, ""), {})
        agg: dict = {}
        for key, values in metrics.items():
            iv = mean_ci(values, level)
            agg[key], agg[f"{key}_ci95"], agg[f"{key}_n"] = iv.mean, [iv.low, iv.high], iv.n
            if key in base:
                d = paired_difference(values, base[key], level)
                agg[f"{key}_diff"], agg[f"{key}_diff_ci95"] = d.mean, [d.low, d.high]
                agg[f"{key}_differs"] = d.excludes(0.0)
        out[variant] = agg
    return out
