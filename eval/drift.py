"""Long-horizon drift: a metric as a curve over time, its least-squares slope and last-minus-first change.

Infinite-length generation degrades slowly (identity, sharpness, sync). A single number over the whole
video hides that, so any per-frame or per-window metric is reported per window of `window_s` seconds.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lit_avatar.data.atomic import TEMP_SUFFIX, atomic_path
from lit_avatar.errors import UserError


@dataclass
class DriftCurve:
    """A metric per window: centre times (s), values, the slope per minute and last minus first."""

    times: list[float]
    values: list[float]
    slope_per_min: float
    last_minus_first: float

    def to_dict(self) -> dict:
        """JSON-ready: non-finite values (windows too short for the metric) become None."""
        d = asdict(self)
        d["values"] = [v if np.isfinite(v) else None for v in d["values"]]
        return d


def window_bounds(num_frames: int, fps: float = 25.0, window_s: float = 10.0) -> list[tuple[int, int]]:
    """[start, end) frame ranges of consecutive windows; a last partial window is kept if it has at least
    half a window of frames (otherwise merged into the previous one) so no frames are silently dropped."""
    if window_s <= 0:
        raise UserError(f"--window: expected a positive window length in seconds, got {window_s}")
    size = max(int(round(window_s * fps)), 1)
    bounds = [(s, min(s + size, num_frames)) for s in range(0, num_frames, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < size / 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def fit_slope(times_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values against time, per minute (0 with fewer than 2 points)."""
    t = np.asarray(times_s, np.float64) / 60.0
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if t.size < 2 or np.ptp(t) == 0:
        return 0.0
    tc = t - t.mean()
    return float((tc * (v - v.mean())).sum() / (tc * tc).sum())


def curve_from_windows(bounds: Sequence[tuple[int, int]], values: Sequence[float], fps: float = 25.0) -> DriftCurve:
    """Build a DriftCurve from per-window values and their frame ranges."""
    times = [0.5 * (s + e - 1) / fps for s, e in bounds]  # mean timestamp of the frames in the window
    vals = [float(v) for v in values]
    finite = [v for v in vals if np.isfinite(v)]
    change = finite[-1] - finite[0] if len(finite) >= 2 else 0.0
    return DriftCurve(times, vals, fit_slope(times, vals), float(change))


def per_frame_drift(values: Sequence[float], fps: float = 25.0, window_s: float = 10.0) -> DriftCurve:
    """Drift of a per-frame metric (e.g. CSIM, mouth/audio error): the window mean per window."""
    v = np.asarray(values, np.float64)
    bounds = window_bounds(len(v), fps, window_s)
    return curve_from_windows(bounds, [float(np.nanmean(v[s:e])) for s, e in bounds], fps)


def windowed_drift(num_frames: int, metric: Callable[[int, int], float], fps: float = 25.0,
                   window_s: float = 10.0) -> DriftCurve:
    """Drift of a window metric (e.g. FID of the window against window 0, Sync-C of the window):
    `metric(start, end)` is evaluated on each window's frame range."""
    bounds = window_bounds(num_frames, fps, window_s)
    return curve_from_windows(bounds, [metric(s, e) for s, e in bounds], fps)


def plot_curves(curves: Mapping[str, DriftCurve], path: str | os.PathLike, title: str = "") -> None:
    """Save the curves as a PNG (one panel per metric), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    n = max(len(curves), 1)
    fig, axes = plt.subplots(n, 1, figsize=(6, 2.2 * n), squeeze=False)
    for ax, (name, c) in zip(axes[:, 0], curves.items()):
        ax.plot(c.times, c.values, marker="o")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: slope {c.slope_per_min:+.4g}/min, last-first {c.last_minus_first:+.4g}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)


def log_tensorboard(curves: Mapping[str, DriftCurve], logdir: str | os.PathLike, prefix: str = "drift") -> None:
    """Write each curve as TensorBoard scalars `prefix/name`, step = window centre in whole seconds."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=os.fspath(logdir))
    try:
        for name, c in curves.items():
            for t, v in zip(c.times, c.values):
                writer.add_scalar(f"{prefix}/{name}", v, global_step=int(round(t)))
    finally:
        writer.close()


def plot_overlay(runs: Mapping[str, Mapping[str, DriftCurve]], path: str | os.PathLike, title: str = "",
                 marker_s: float | None = None, marker_label: str = "") -> None:
    """One panel per metric with one line per run (e.g. per ablation variant), written atomically as PNG.

    Args:
        runs: {run name: {metric: curve}}; metrics missing from a run are left out of its panel.
        marker_s: draw a vertical line at this time (e.g. the trained RoPE horizon).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(m for curves in runs.values() for m in curves))
    fig, axes = plt.subplots(max(len(metrics), 1), 1, figsize=(7, 2.4 * max(len(metrics), 1)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for name, curves in runs.items():
            if metric in curves:
                c = curves[metric]
                ax.plot(c.times, c.values, marker="o", label=f"{name} ({c.slope_per_min:+.3g}/min)")
        if marker_s is not None:
            ax.axvline(marker_s, color="grey", linestyle=":", label=marker_label or None)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_png(fig, os.fspath(path))


def _save_png(fig, path: str) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with atomic_path(path, suffix=TEMP_SUFFIX) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
