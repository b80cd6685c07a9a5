"""Per-metric scorers used by `lit-avatar eval`: each scores one video and accumulates the aggregate.

Every scorer keeps what its drift curve needs (per-frame features or values), so drift costs no second
pass over the networks.
"""
from __future__ import annotations

import numpy as np
import torch

from eval.drift import DriftCurve, per_frame_drift, windowed_drift
from eval.frechet import frechet_distance, frechet_distance_features, stats_from_sums


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class FeaturePool:
    """Running sums of real and generated features (float64, so features can arrive in any split), plus the
    raw features while they are few: then the distance comes from the features (exact, and far cheaper
    than a DxD eigenproblem when N < D).

    Args:
        dim: feature dimension.
        keep: keep raw features while each side has at most this many rows.
    """

    def __init__(self, dim: int, keep: int = 2048):
        self.keep = keep
        self.sums = {side: [np.zeros(dim), np.zeros((dim, dim)), 0] for side in (True, False)}
        self.rows: dict[bool, list[np.ndarray] | None] = {True: [], False: []}

    def add(self, feats: np.ndarray, real: bool) -> None:
        f = np.asarray(feats, np.float64)
        acc = self.sums[real]
        acc[0] += f.sum(0)
        acc[1] += f.T @ f
        acc[2] += len(f)
        kept = self.rows[real]
        if kept is not None:
            kept.append(f)
            if sum(len(k) for k in kept) > self.keep:
                self.rows[real] = None

    def distance(self) -> float | None:
        if self.sums[True][2] < 2 or self.sums[False][2] < 2:
            return None
        if self.rows[True] is not None and self.rows[False] is not None:
            return frechet_distance_features(np.concatenate(self.rows[False]), np.concatenate(self.rows[True]))
        return frechet_distance(*stats_from_sums(*self.sums[False]), *stats_from_sums(*self.sums[True]))


class FIDScorer:
    """FID per video (its frames vs its real video's frames) and over all frames.

    Args:
        model: images [N,3,H,W] in [0,1] -> [N,2048].
        batch_size: frames per forward.
        frame_stride: use every k-th frame (FID over all frames is the talking-head practice: k=1).
        device: torch device for the network.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int = 16, frame_stride: int = 1, device: str = "cpu"):
        self.model = model.to(device)
        self.batch_size, self.stride, self.device = batch_size, max(frame_stride, 1), device
        self.pool = FeaturePool(2048)
        self.last_gen: np.ndarray | None = None
        self.last_real: np.ndarray | None = None

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> np.ndarray:
        """pool3 features [T', 2048] of RGB uint8 frames [T, H, W, 3] (every `stride`-th)."""
        frames = frames[:: self.stride]
        out = []
        for s in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[s: s + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            out.append(self.model(x).double().cpu().numpy())
        return np.concatenate(out)

    def video(self, gen: np.ndarray, real: np.ndarray) -> dict:
        g, r = self.features(gen), self.features(real)
        self.pool.add(g, real=False)
        self.pool.add(r, real=True)
        self.last_gen, self.last_real = g, r
        fid = frechet_distance_features(g, r) if len(g) >= 2 and len(r) >= 2 else float("nan")
        return {"fid": _nan_to_none(fid)}

    def drift(self, fps: float, window_s: float) -> DriftCurve:
        """FID of each window of the last video against all of its real frames."""
        g, r = self.last_gen, self.last_real

        def window_fid(s: int, e: int) -> float:
            part = g[s // self.stride: max(e // self.stride, s // self.stride + 1)]
            return frechet_distance_features(part, r) if len(part) >= 2 else float("nan")

        return windowed_drift(len(g) * self.stride, window_fid, fps, window_s)

    def aggregate(self) -> dict:
        return {"fid": self.pool.distance()}

    def protocol_info(self) -> dict:
        return {"protocol": "pytorch-fid" if self.stride == 1 else f"pytorch-fid every {self.stride}th frame",
                "gen_frames": int(self.pool.sums[False][2]), "real_frames": int(self.pool.sums[True][2])}


class FVDScorer:
    """FVD over the clips `protocol` takes from each video (eval.fvd: "stylegan-v", one clip per video, by
    default); per video too when a video gives 2+ clips.

    Args:
        detector: the I3D TorchScript module.
        batch_size: clips per forward.
        device: torch device for the network.
        protocol: which clips and how they are resized (eval.fvd.FVD_PROTOCOLS).
    """

    def __init__(self, detector: torch.nn.Module, batch_size: int = 4, device: str = "cpu",
                 protocol: str = "stylegan-v"):
        from eval.fvd import FEATURE_DIM, FVD_PROTOCOLS, I3DFeatures

        if protocol not in FVD_PROTOCOLS:
            raise ValueError(f"unknown FVD protocol {protocol!r}; expected one of {FVD_PROTOCOLS}")
        self.extractor = I3DFeatures(detector.to(device))
        self.batch_size, self.device, self.protocol = batch_size, device, protocol
        self.pool = FeaturePool(FEATURE_DIM)
        self.clips = {"gen": 0, "real": 0}

    def features(self, frames: np.ndarray) -> np.ndarray:
        from eval.fvd import FEATURE_DIM, protocol_clips

        clips = protocol_clips(frames, self.protocol)
        out = [self.extractor(torch.stack(clips[s: s + self.batch_size]).to(self.device)).double().cpu().numpy()
               for s in range(0, len(clips), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))

    def video(self, gen: np.ndarray, real: np.ndarray) -> dict:
        g, r = self.features(gen), self.features(real)
        self.pool.add(g, real=False)
        self.pool.add(r, real=True)
        self.clips["gen"] += len(g)
        self.clips["real"] += len(r)
        fvd = frechet_distance_features(g, r) if len(g) >= 2 and len(r) >= 2 else float("nan")
        return {"fvd": _nan_to_none(fvd), "fvd_clips": int(len(g))}

    def aggregate(self) -> dict:
        return {"fvd": self.pool.distance()}

    def protocol_info(self) -> dict:
        return {"protocol": self.protocol, "clip_frames": 16, "gen_clips": self.clips["gen"],
                "real_clips": self.clips["real"]}


class SyncScorer:
    """SyncNet Sync-C / Sync-D / AV offset per video; aggregates are means over videos."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 20, device: str = "cpu",
                 protocol: str = "syncnet_python"):
        from eval.faces import SYNC_PROTOCOLS

        if protocol not in SYNC_PROTOCOLS:
            raise ValueError(f"unknown SyncNet crop protocol {protocol!r}; expected one of {SYNC_PROTOCOLS}")
        self.model = model.to(device)
        self.batch_size, self.device, self.protocol = batch_size, device, protocol
        self.rows: list[dict] = []
        self.windows = 0
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def video(self, frames: np.ndarray, audio: np.ndarray, boxes_px: np.ndarray, fps: float) -> dict:
        from eval.syncnet import (
            audio_windows,
            lip_windows,
            mfcc_features,
            num_windows,
            rgb_to_syncnet_crops,
            sync_scores,
        )

        crops = rgb_to_syncnet_crops(frames, boxes_px, self.protocol)
        n = num_windows(len(crops), len(audio), fps)
        if n == 0:
            self.last = None
            return {"sync_c": None, "sync_d": None, "av_offset": None}
        aud = audio_windows(mfcc_features(audio), n)
        vs, as_ = [], []
        for s in range(0, n, self.batch_size):
            c = min(self.batch_size, n - s)
            vs.append(self.model.forward_lip(lip_windows(crops, s, c).to(self.device)).cpu())
            as_.append(self.model.forward_aud(aud[s: s + c].to(self.device)).cpu())
        v, a = torch.cat(vs), torch.cat(as_)
        self.last = (v, a)
        self.windows += n
        out = sync_scores(v, a)
        row = {"sync_c": out["sync_c"], "sync_d": out["sync_d"], "av_offset": out["offset"]}
        self.rows.append(row)
        return row

    def drift(self, num_frames: int, fps: float, window_s: float) -> DriftCurve | None:
        """Sync-C of the windows that start inside each time window."""
        if self.last is None:
            return None
        from eval.syncnet import sync_scores

        v, a = self.last

        def window_conf(s: int, e: int) -> float:
            e = min(e, len(v))
            return sync_scores(v[s:e], a[s:e])["sync_c"] if e - s >= 1 else float("nan")

        return windowed_drift(num_frames, window_conf, fps, window_s)

    def aggregate(self) -> dict:
        if not self.rows:
            return {"sync_c": None, "sync_d": None}
        return {k: float(np.mean([r[k] for r in self.rows])) for k in ("sync_c", "sync_d")}

    def protocol_info(self) -> dict:
        crop = ("syncnet_python crop_video: 13-frame median filter of the box track, int() edges"
                if self.protocol == "syncnet_python" else "per-frame boxes, rounded edges")
        return {"protocol": self.protocol, "crop": crop, "videos": len(self.rows), "windows": self.windows}


class CSIMScorer:
    """ArcFace cosine similarity of each frame to the reference; per video mean; aggregate mean of means."""

    def __init__(self, arcface):
        self.arcface = arcface
        self.frames = 0
        self.means: list[float] = []
        self.last: np.ndarray | None = None

    def video(self, frames: np.ndarray, landmarks: np.ndarray, reference: np.ndarray,
              ref_landmarks: np.ndarray) -> dict:
        from eval.csim import csim

        sims = csim(self.arcface, reference, ref_landmarks, frames, landmarks)
        self.last = sims
        self.frames += len(sims)
        self.means.append(float(sims.mean()))
        return {"csim": float(sims.mean())}

    def drift(self, fps: float, window_s: float) -> DriftCurve:
        return per_frame_drift(self.last, fps, window_s)

    def aggregate(self) -> dict:
        return {"csim": float(np.mean(self.means)) if self.means else None}

    def protocol_info(self) -> dict:
        return {"protocol": "arcface-5point-mean", "videos": len(self.means), "frames": self.frames}


class SynthSyncScorer:
    """SynthSync correlation per video; aggregate means."""

    def __init__(self, max_lag: int = 5):
        self.max_lag = max_lag
        self.frames = 0
        self.rows: list[dict] = []
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def video(self, frames: np.ndarray, mouth_box, audio: np.ndarray, fps: float) -> dict:
        from eval.synthsync import audio_envelope, mouth_opening, synthsync_from_series

        opening = mouth_opening(frames, mouth_box)
        env = audio_envelope(audio, len(opening), fps=fps)
        out = synthsync_from_series(opening, env, self.max_lag)
        self.last = (opening, env)
        self.frames += len(opening)
        row = {"synthsync_r": out["r"], "synthsync_best_r": out["best_r"], "synthsync_best_lag": out["best_lag"]}
        self.rows.append(row)
        return row

    def drift(self, fps: float, window_s: float) -> DriftCurve:
        from eval.synthsync import lagged_correlation

        opening, env = self.last

        def window_r(s: int, e: int) -> float:
            return lagged_correlation(opening[s:e], env[s:e], 0)

        return windowed_drift(len(opening), window_r, fps, window_s)

    def aggregate(self) -> dict:
        if not self.rows:
            return {"synthsync_r": None, "synthsync_best_r": None}
        return {k: float(np.mean([r[k] for r in self.rows])) for k in ("synthsync_r", "synthsync_best_r")}

    def protocol_info(self) -> dict:
        return {"protocol": "synthsync", "videos": len(self.rows), "frames": self.frames}


class SeamScorer:
    """Frame change across block seams over frame change inside blocks (eval.stream_scores.seam_flicker), with
    the seams where the generator's causal grid puts them (the `grid` entry `lit-avatar generate` writes into
    the sidecar); aggregate means."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def video(self, frames: np.ndarray, grid: dict) -> dict:
        from eval.stream_scores import seam_flicker
        from lit_avatar.causal_grid import CausalGrid

        causal = CausalGrid(int(grid["frames_per_block"]), int(grid["temporal_factor"]), float(grid.get("fps", 25)))
        row = seam_flicker(frames[None], causal)
        self.rows.append(row)
        return row

    def aggregate(self) -> dict:
        keys = ("flicker_boundary", "flicker_inside", "flicker_ratio")
        if not self.rows:
            return {k: None for k in keys}
        return {k: float(np.nanmean([r[k] for r in self.rows])) for k in keys}

    def protocol_info(self) -> dict:
        return {"protocol": "mean |frame t - frame t-1| at the causal grid's block seams / inside blocks",
                "videos": len(self.rows)}
