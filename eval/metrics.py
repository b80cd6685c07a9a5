"""torchmetrics wrappers so the same metrics run inside a Lightning validation loop and offline.

States are running sums (sum x, sum x x^T, N) in float64 with dist_reduce_fx="sum": updates can be split
across batches and processes in any way and give the same statistics.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from eval.frechet import frechet_distance, stats_from_sums
from eval.synthsync import synthsync


def video_batch_to_images(video: Tensor) -> Tensor:
    """Batch-contract video [B, 3, T, H, W] in [-1, 1] -> frames [B*T, 3, H, W] in [0, 1] (FID's input)."""
    b, c, t, h, w = video.shape
    return ((video.clamp(-1, 1) + 1) * 0.5).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def video_batch_to_clips(video: Tensor, clip_len: int = 16) -> Tensor:
    """Batch-contract video [B, 3, T, H, W] in [-1, 1] -> I3D clips [N, 3, clip_len, 224, 224] in [-1, 1]
    (consecutive clips per sample, short side to 224 and centre crop, as eval.fvd does for files)."""
    from eval.fvd import iter_clips, preprocess_clip

    frames = ((video.detach().float().clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 4, 1).cpu().numpy()
    clips = [preprocess_clip(c) for sample in frames for c in iter_clips(sample, clip_len)]
    return torch.stack(clips).to(video.device)


class FrechetFeatureMetric(Metric):
    """Frechet distance between real and generated feature distributions (FID, FVD).

    Args:
        feature_extractor: maps an input batch to features [N, num_features] (InceptionV3 for FID, I3D for
            FVD); None to feed features directly with `update_features`.
        num_features: feature dimension D (2048 for FID, 400 for FVD).
        method: trace method, "eig" (default) or "sqrtm" (see eval.frechet).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, feature_extractor: Callable[[Tensor], Tensor] | None, num_features: int, method: str = "eig",
                 **kwargs):
        super().__init__(**kwargs)
        self.feature_extractor = feature_extractor
        self.num_features = int(num_features)
        self.method = method
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, inputs: Tensor, real: bool, is_features: bool = False) -> None:
        """Accumulate a batch on the real or generated side.

        Args:
            inputs: a batch for the feature extractor, or features [N, D] when `is_features` (or when there
                is no extractor).
            real: True for the reference side, False for generated samples.
            is_features: skip the extractor.
        """
        if is_features or self.feature_extractor is None:
            feats = inputs
        else:
            with torch.no_grad():
                feats = self.feature_extractor(inputs)
        f = torch.as_tensor(feats).detach().to(device=self.real_sum.device, dtype=torch.float64)
        f = f.reshape(f.shape[0], -1)
        if f.shape[1] != self.num_features:
            raise ValueError(f"expected features with {self.num_features} dims, got {f.shape[1]}")
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])

    def update_features(self, features: Tensor, real: bool) -> None:
        """Accumulate precomputed features [N, D] (bypasses the extractor)."""
        self.update(features, real, is_features=True)

    def stats(self, real: bool) -> tuple[np.ndarray, np.ndarray]:
        """Mean and N-1 covariance of one side, float64 numpy."""
        side = "real" if real else "fake"
        return stats_from_sums(
            getattr(self, f"{side}_sum").cpu().numpy(),
            getattr(self, f"{side}_outer").cpu().numpy(),
            int(getattr(self, f"{side}_count")),
        )

    def compute(self) -> Tensor:
        """The Frechet distance between the two sides (float64 scalar)."""
        d = frechet_distance(*self.stats(True), *self.stats(False), method=self.method)
        return torch.tensor(d, dtype=torch.float64)


class SynthSyncMetric(Metric):
    """Mean SynthSync correlation (lag 0) over videos, plus the mean best-lag correlation.

    Args:
        fps: video frame rate.
        max_lag: lag search range in frames.
        sample_rate: audio sample rate.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, fps: float = 25.0, max_lag: int = 5, sample_rate: int = 16000, **kwargs):
        super().__init__(**kwargs)
        self.fps, self.max_lag, self.sample_rate = fps, max_lag, sample_rate
        self.add_state("r_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("best_r_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, video: Tensor, audio: Tensor, mouth_box: Tensor) -> None:
        """Accumulate a batch in the batch-contract layout.

        Args:
            video: [B, 3, T, H, W] float in [-1, 1].
            audio: [B, S] float32 at `sample_rate`, aligned with frame 0.
            mouth_box: [B, 4] normalised (x0, y0, x1, y1).
        """
        frames = ((video.detach().float().clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 4, 1).cpu().numpy()
        audio_np = audio.detach().float().cpu().numpy()
        boxes = mouth_box.detach().float().cpu().numpy()
        for b in range(frames.shape[0]):
            out = synthsync(frames[b], boxes[b], audio_np[b], fps=self.fps, max_lag=self.max_lag,
                            sample_rate=self.sample_rate)
            self.r_sum += out["r"]
            self.best_r_sum += out["best_r"]
            self.count += 1

    def compute(self) -> dict[str, Tensor]:
        """{"r": mean r at lag 0, "best_r": mean best-lag r}."""
        n = self.count.clamp(min=1).double()
        return {"r": self.r_sum / n, "best_r": self.best_r_sum / n}
