"""Mean, 95% interval and 'differs from full' against scipy.stats."""
import math

import numpy as np
import pytest
from scipy import stats

from eval.stats import mean_ci, paired_difference, summarize


def test_mean_ci_matches_scipy_t_interval():
    values = [0.885, 0.861, 0.902, 0.874]
    iv = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert iv.mean == pytest.approx(np.mean(values))
    assert (iv.low, iv.high) == pytest.approx((low, high), rel=1e-12)
    assert iv.n == 4


def test_paired_difference_agrees_with_scipy_paired_t_test():
    full = [0.88, 0.85, 0.90]
    other = [0.80, 0.78, 0.83]  # consistently lower: differs
    d = paired_difference(other, full)
    p = stats.ttest_rel(other, full).pvalue
    assert d.excludes(0.0) == (p < 0.05)
    assert d.excludes(0.0)
    same = [0.87, 0.87, 0.89]  # within the seeds' spread
    d2 = paired_difference(same, full)
    assert d2.excludes(0.0) == (stats.ttest_rel(same, full).pvalue < 0.05)
    assert not d2.excludes(0.0)


def test_single_seed_has_no_interval_and_never_differs():
    iv = mean_ci([0.5])
    assert (iv.low, iv.high, iv.n) == (0.5, 0.5, 1)
    assert not paired_difference([0.4], [0.5]).excludes(0.0)
    assert math.isnan(mean_ci([float("nan"), None]).mean)


def test_summarize_writes_means_intervals_and_verdicts():
    per_seed = {"full": {"r": [0.88, 0.85, 0.90]}, "no_mci": {"r": [0.80, 0.78, 0.83]}}
    out = summarize(per_seed, "full")
    assert out["full"]["r"] == pytest.approx(np.mean([0.88, 0.85, 0.90]))
    assert "r_differs" not in out["full"]
    assert out["no_mci"]["r_differs"] is True
    assert out["no_mci"]["r_diff"] == pytest.approx(np.mean([-0.08, -0.07, -0.07]))
