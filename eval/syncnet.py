"""SyncNet lip-sync confidence (Sync-C) and distance (Sync-D), as joonson/syncnet_python computes them.

The network reproduces syncnet_v2's layer stacks with its exact parameter names so that the published
weight file (a plain name->tensor dict) loads with weights_only=True. Scoring is a pure function of the
two embedding sequences, kept apart from the network so it can be checked on planted offsets.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.fid import load_matching, load_state_dict_file

WEIGHTS_NAME = "syncnet_v2.model"
VSHIFT = 15  # offsets -15..15 video frames are searched
WINDOW = 5  # video frames per lip window
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps video
AUDIO_WINDOW = 20  # MFCC columns per audio window (= 5 video frames)


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Audio tower on MFCC [N,1,13,20] and lip tower on [N,3,5,224,224] (BGR 0-255), 1024-d each."""

    def __init__(self):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(1, stride=1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(3, stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(3, stride=2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                      nn.Linear(512, 1024))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                      nn.Linear(512, 1024))
        self.eval()

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        """MFCC windows [N, 1, 13, 20] -> [N, 1024]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: Tensor) -> Tensor:
        """Lip windows [N, 3, 5, 224, 224] (BGR, 0-255) -> [N, 1024]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | os.PathLike) -> SyncNet:
    """Build SyncNet from syncnet_v2.model (a name->tensor dict), eval mode, no grad."""
    model = SyncNet()
    load_matching(model, load_state_dict_file(path, "SyncNet"), os.fspath(path), "SyncNet")
    return model.eval().requires_grad_(False)


INT16_SCALE = 32768.0


def mfcc_features(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """python_speech_features MFCC with its defaults (13 coeffs, 25 ms / 10 ms, 26 filters, preemph 0.97,
    ceplifter 22, energy appended) -> [13, N] at 100 Hz.

    syncnet_python reads its wav with scipy, i.e. as int16 sample values, and the network was trained on
    MFCCs of that scale (the appended log energy moves by log(32768^2) otherwise), so float audio in
    [-1, 1] is scaled back to the int16 range first.
    """
    from python_speech_features import mfcc

    samples = np.asarray(audio, dtype=np.float64) * INT16_SCALE
    return np.asarray(mfcc(samples, sample_rate), dtype=np.float32).T


def num_windows(num_frames: int, num_samples: int, fps: float = 25.0, sample_rate: int = 16000) -> int:
    """Number of 5-frame windows SyncNet scores: min(video frames, whole audio frames) - 5."""
    audio_frames = int(np.floor(num_samples / (sample_rate / fps)))
    return max(min(num_frames, audio_frames) - WINDOW, 0)


def audio_windows(mfcc: np.ndarray, count: int) -> Tensor:
    """MFCC [13, N] -> windows [count, 1, 13, 20]; window v covers columns 4v..4v+20 (video frame v..v+5)."""
    cols = mfcc.shape[1]
    need = MFCC_PER_FRAME * (count - 1) + AUDIO_WINDOW if count else 0
    if need > cols:  # a few missing columns at the very end: pad with zeros rather than drop a window
        mfcc = np.pad(mfcc, ((0, 0), (0, need - cols)))
    wins = [mfcc[:, MFCC_PER_FRAME * v: MFCC_PER_FRAME * v + AUDIO_WINDOW] for v in range(count)]
    return torch.from_numpy(np.stack(wins)[:, None].astype(np.float32)) if wins else torch.zeros(0, 1, 13, 20)


def lip_windows(crops: np.ndarray, start: int, count: int) -> Tensor:
    """Face crops [T, 224, 224, 3] BGR float 0-255 -> windows [count, 3, 5, 224, 224] starting at `start`."""
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).permute(3, 0, 1, 2)  # [3,T,H,W]
    return torch.stack([x[:, v: v + WINDOW] for v in range(start, start + count)])


def sync_scores(video_emb: Tensor | np.ndarray, audio_emb: Tensor | np.ndarray, vshift: int = VSHIFT) -> dict:
    """Sync-C, Sync-D and AV offset from per-window embeddings [n, D] (video i, audio i).

    For each video window i, the L2 distance to audio windows i-vshift..i+vshift (zero embeddings past the
    ends, as syncnet_python pads); mdist = the mean over i for each offset; Sync-D = min(mdist);
    Sync-C = median(mdist) - min(mdist); offset = vshift - argmin(mdist).
    """
    v = torch.as_tensor(video_emb, dtype=torch.float64)
    a = torch.as_tensor(audio_emb, dtype=torch.float64)
    n = v.shape[0]
    if n == 0:
        raise ValueError("no windows to score: the video or audio is shorter than 6 frames")
    padded = F.pad(a, (0, 0, vshift, vshift))
    span = 2 * vshift + 1
    dists = torch.stack([F.pairwise_distance(v[i: i + 1].expand(span, -1), padded[i: i + span]) for i in range(n)])
    mdist = dists.mean(0)
    min_dist, idx = torch.min(mdist, 0)
    return {
        "sync_d": float(min_dist),
        "sync_c": float(torch.median(mdist) - min_dist),
        "offset": int(vshift - int(idx)),
        "mdist": mdist.tolist(),
    }


@torch.no_grad()
def embed(model: SyncNet, crops: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000,
          batch_size: int = 20) -> tuple[Tensor, Tensor]:
    """Embeddings of every lip window and its audio window.

    Args:
        model: SyncNet.
        crops: face crops [T, 224, 224, 3], BGR float 0-255.
        audio: mono waveform at `sample_rate`, aligned with frame 0.
        fps: must be 25 for the 4-columns-per-frame MFCC alignment.
        sample_rate: audio rate.
        batch_size: windows per forward.
    """
    if abs(fps - 25.0) > 1e-6:
        raise ValueError(f"SyncNet needs 25 fps video, got {fps}")
    n = num_windows(len(crops), len(audio), fps, sample_rate)
    aud = audio_windows(mfcc_features(audio, sample_rate), n)
    vids, auds = [], []
    for s in range(0, n, batch_size):
        c = min(batch_size, n - s)
        vids.append(model.forward_lip(lip_windows(crops, s, c)))
        auds.append(model.forward_aud(aud[s: s + c]))
    if not vids:
        return torch.zeros(0, 1024), torch.zeros(0, 1024)
    return torch.cat(vids), torch.cat(auds)


def rgb_to_syncnet_crops(frames: np.ndarray, boxes: np.ndarray, protocol: str = "syncnet_python") -> np.ndarray:
    """RGB uint8 frames + face boxes (pixels, [T,4] or [4]) -> 224x224 BGR float 0-255 crops, cut as
    `protocol` says (eval.faces.syncnet_crops: syncnet_python's crop_video by default)."""
    from eval.faces import syncnet_crops

    return syncnet_crops(frames, boxes, protocol)[..., ::-1].copy()
