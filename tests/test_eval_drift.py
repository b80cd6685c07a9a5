"""Drift curves: windows, least-squares slope per minute, PNG and TensorBoard output."""
import numpy as np
import pytest

from eval.drift import fit_slope, log_tensorboard, per_frame_drift, plot_curves, window_bounds, windowed_drift
from lit_avatar.errors import UserError


def test_window_bounds():
    assert window_bounds(100, fps=10, window_s=3) == [(0, 30), (30, 60), (60, 100)]  # 10-frame tail merged
    assert window_bounds(100, fps=10, window_s=4) == [(0, 40), (40, 80), (80, 100)]  # 20 = half: kept
    with pytest.raises(UserError, match="--window"):
        window_bounds(10, window_s=0)


def test_linear_metric_slope_and_change():
    fps, minutes = 25.0, 2.0
    t = np.arange(int(minutes * 60 * fps)) / fps
    values = 0.9 - 0.05 * t / 60.0  # drops 0.05 per minute
    curve = per_frame_drift(values, fps=fps, window_s=10.0)
    assert len(curve.values) == 12
    assert curve.slope_per_min == pytest.approx(-0.05, rel=1e-9)
    assert curve.last_minus_first == pytest.approx(-0.05 * 110 / 60, rel=1e-9)
    assert curve.times[0] == pytest.approx(5.0 - 0.5 / fps)


def test_slope_matches_polyfit():
    rng = np.random.default_rng(0)
    t, v = np.sort(rng.uniform(0, 600, 20)), rng.standard_normal(20)
    assert fit_slope(t, v) == pytest.approx(np.polyfit(t / 60, v, 1)[0], rel=1e-9)
    assert fit_slope([1.0], [2.0]) == 0.0


def test_windowed_metric_and_outputs(tmp_path):
    curve = windowed_drift(250, lambda s, e: float(e - s) + s / 100.0, fps=25, window_s=2)
    assert curve.values == [50.0, 50.5, 51.0, 51.5, 52.0]
    plot_curves({"fid": curve, "csim": per_frame_drift(np.linspace(1, 0, 250), 25, 2)}, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"]  # no temp file left
    log_tensorboard({"fid": curve}, tmp_path / "tb", prefix="video0")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("video0/fid")
    assert [e.step for e in events] == [1, 3, 5, 7, 9]  # 0.98 s, 2.98 s, ...
    assert [e.value for e in events] == pytest.approx(curve.values)
