"""FVD: Frechet distance of I3D (Kinetics-400) features of 16-frame clips.

The detector is StyleGAN-V's TorchScript I3D (i3d_torchscript.pt) loaded from a local path. Clips are
preprocessed here ([-1, 1], 224x224) and the detector is told not to rescale or resize again, so the same
numbers come out whichever way frames were read.

FVD has no single protocol in this field (REFERENCE.md "Evaluation protocols"); two are offered:
- "stylegan-v" (default): as StyleGAN-V's compute_fvd, ONE 16-frame clip per video (its first frames;
  videos shorter than a clip are left out) and the whole frame resized to 224x224, no crop.
- "all-clips": every non-overlapping 16-frame clip of every video, short side resized to 224 and a
  centre crop: more clips per video, a different number.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_avatar.errors import UserError, existing_file

WEIGHTS_NAME = "i3d_torchscript.pt"
CLIP_LEN = 16
SIZE = 224
FEATURE_DIM = 400
FVD_PROTOCOLS = ("stylegan-v", "all-clips")


def load_i3d(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Load the I3D TorchScript file on CPU, in eval mode."""
    path = os.fspath(path)
    existing_file(path, "an I3D TorchScript file")
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as err:
        raise UserError(f"{path}: not a TorchScript file ({type(err).__name__})") from None
    return model.eval()


def preprocess_clip(frames: np.ndarray | Tensor) -> Tensor:
    """Frames [T, H, W, 3] (uint8, or float in [0, 1]) -> [3, T, 224, 224] float in [-1, 1].

    Short side resized to 224 (bilinear, align_corners=False), then a centre crop.
    """
    x = torch.as_tensor(np.asarray(frames))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.permute(0, 3, 1, 2)  # [T,3,H,W]
    h, w = x.shape[-2:]
    scale = SIZE / min(h, w)
    nh, nw = max(SIZE, round(h * scale)), max(SIZE, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    x = x[:, :, top: top + SIZE, left: left + SIZE]
    return (x.clamp(0, 1) * 2 - 1).permute(1, 0, 2, 3).contiguous()


def preprocess_clip_whole_frame(frames: np.ndarray | Tensor) -> Tensor:
    """Frames [T, H, W, 3] (uint8, or float in [0, 1]) -> [3, T, 224, 224] in [-1, 1]: the whole frame
    resized to 224x224 (bilinear, align_corners=False), aspect not kept, as StyleGAN-V's I3D resizes."""
    x = torch.as_tensor(np.asarray(frames))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = F.interpolate(x.permute(0, 3, 1, 2), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).permute(1, 0, 2, 3).contiguous()


def protocol_clips(frames: np.ndarray, protocol: str) -> list[Tensor]:
    """The preprocessed clips a video contributes under `protocol` (see the module docstring)."""
    if protocol == "stylegan-v":
        return [preprocess_clip_whole_frame(frames[:CLIP_LEN])] if len(frames) >= CLIP_LEN else []
    if protocol == "all-clips":
        return [preprocess_clip(c) for c in iter_clips(frames)]
    raise ValueError(f"unknown FVD protocol {protocol!r}; expected one of {FVD_PROTOCOLS}")


def clip_starts(num_frames: int, clip_len: int = CLIP_LEN, stride: int | None = None) -> list[int]:
    """Start frames of the clips taken from a video: consecutive non-overlapping clips by default.

    A video shorter than one clip yields a single clip (padded by `iter_clips`); a tail shorter than a clip
    is dropped so every clip covers real motion.
    """
    stride = stride or clip_len
    if num_frames <= 0:
        return []
    if num_frames < clip_len:
        return [0]
    return list(range(0, num_frames - clip_len + 1, stride))


def iter_clips(frames: np.ndarray, clip_len: int = CLIP_LEN, stride: int | None = None) -> Iterator[np.ndarray]:
    """Yield clips [clip_len, H, W, 3] of a video; short videos are padded by repeating the last frame."""
    for s in clip_starts(len(frames), clip_len, stride):
        clip = frames[s: s + clip_len]
        if len(clip) < clip_len:
            clip = np.concatenate([clip, np.repeat(clip[-1:], clip_len - len(clip), axis=0)])
        yield clip


class I3DFeatures(torch.nn.Module):
    """Callable feature extractor: preprocessed clips [N, 3, T, 224, 224] in [-1, 1] -> [N, 400]."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        feats = self.detector(clips, rescale=False, resize=False, return_features=True)
        return feats.reshape(feats.shape[0], -1)


def video_features(extractor: I3DFeatures, videos: Iterable[np.ndarray], batch_size: int = 4) -> np.ndarray:
    """I3D features [num_clips, 400] of every clip of every video (frames [T, H, W, 3])."""
    out, batch = [], []
    for frames in videos:
        for clip in iter_clips(frames):
            batch.append(preprocess_clip(clip))
            if len(batch) == batch_size:
                out.append(extractor(torch.stack(batch)).double().numpy())
                batch = []
    if batch:
        out.append(extractor(torch.stack(batch)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))
