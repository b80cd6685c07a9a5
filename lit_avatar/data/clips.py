"""Decoded sample -> training clip (fixed length, aligned audio, reference frame) -> batch.

Kept apart from the webdataset pipeline so the clip logic (the part that must be right for lip sync:
audio sample `start * 640` belongs to frame `start`) is testable on plain arrays.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lit_avatar.data.frames import to_unit_range
from lit_avatar.data.schema import CAPTION_EXT, SAMPLES_PER_FRAME, SampleError
from lit_avatar.errors import UserError

META_FIELDS = ("key", "identity", "source", "fps")


def _square(video: torch.Tensor, box: list[float], size: int | None) -> tuple[torch.Tensor, list[float]]:
    """Centre-crop [..., 3, H, W] to a square and resize it to `size`, moving the normalised box along."""
    height, width = video.shape[-2:]
    if size is None or (height == size and width == size):
        return video, box
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    video = video[..., top:top + side, left:left + side]
    x0, y0, x1, y1 = box
    box = [float(np.clip((x0 * width - left) / side, 0, 1)), float(np.clip((y0 * height - top) / side, 0, 1)),
           float(np.clip((x1 * width - left) / side, 0, 1)), float(np.clip((y1 * height - top) / side, 0, 1))]
    lead = video.shape[:-3]
    flat = video.reshape(-1, *video.shape[-3:])
    flat = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False).clamp_(-1, 1)
    return flat.reshape(*lead, 3, size, size), box


def _take_audio(audio: np.ndarray, start: int, clip_frames: int) -> torch.Tensor:
    """Samples [start*640, (start+T)*640), zero-padded where the audio ends early (AAC/rounding tails)."""
    wanted = clip_frames * SAMPLES_PER_FRAME
    piece = np.zeros(wanted, dtype=np.float32)
    chunk = audio[start * SAMPLES_PER_FRAME: start * SAMPLES_PER_FRAME + wanted]
    piece[:len(chunk)] = chunk
    return torch.from_numpy(piece)


def choose_start(meta: dict[str, Any], key: str, clip_frames: int, rng: random.Random, random_start: bool,
                 use_precomputed: bool = False) -> int:
    """First frame of the clip, from the json alone (so only the clip's frames need decoding).

    Args:
        meta: the sample's json.
        key: the sample key (for errors).
        clip_frames: frames per clip.
        rng: picks the start when `random_start`.
        random_start: True for training; False starts at frame 0 (validation is deterministic).
        use_precomputed: clips start at frame 0, because causal latents cannot be cut at any other frame.
    """
    num_frames = int(meta["num_frames"])
    if num_frames < clip_frames:
        raise SampleError(f"sample {key}: {num_frames} frames, shorter than clip_frames={clip_frames}")
    return rng.randint(0, num_frames - clip_frames) if random_start and not use_precomputed else 0


def make_clip(decoded: dict[str, Any], clip_frames: int, size: int | None, start: int,
              use_precomputed: bool = False) -> dict[str, Any]:
    """Cut one fixed-length training clip out of a decoded sample.

    Args:
        decoded: `schema.decode_sample` output (its video may hold only a window from `video_start`).
        clip_frames: frames per clip (T); audio gets T * 640 samples from the same start.
        size: output side in pixels (centre-crop to square, then resize); None keeps the stored size.
        start: the clip's first frame in the sample (`choose_start`).
        use_precomputed: emit `latents`/`ref_latent`/`audio_feats` instead of what they replace.

    Raises:
        SampleError: the sample is shorter than the clip or lacks what is asked for.
    """
    meta, key = decoded["meta"], decoded["key"]
    num_frames = int(meta["num_frames"])
    out: dict[str, Any] = {"meta": {"key": key, "identity": meta["identity"], "source": meta["source"],
                                    "fps": float(meta["fps"])}}
    box = [float(v) for v in meta["mouth_box"]]
    if "mouth" in meta:
        if len(meta["mouth"]) < start + clip_frames:
            raise SampleError(f"sample {key}: json 'mouth' has {len(meta['mouth'])} values for {num_frames} frames")
        out["mouth"] = torch.tensor(meta["mouth"][start:start + clip_frames], dtype=torch.float32)
    if use_precomputed:
        _add_precomputed(out, decoded, clip_frames)
    if "latents" not in out:
        local = start - decoded.get("video_start", 0)
        frames = decoded["video"][local:local + clip_frames] if decoded["video"] is not None else None
        if frames is None or local < 0 or len(frames) < clip_frames:
            raise SampleError(f"sample {key}: video has fewer frames than json num_frames={num_frames}")
        video, box = _square(to_unit_range(frames), box, size)
        out["video"] = video.movedim(0, 1).contiguous()  # [T,3,H,W] -> [3,T,H,W]
    if "ref_latent" not in out:
        out["ref"] = _reference(decoded, start, clip_frames, size, meta)
    if "audio_feats" not in out:
        if decoded["audio"] is None:
            raise SampleError(f"sample {key}: no audio (expected .flac, .wav or an audio stream in .mp4)")
        out["audio"] = _take_audio(decoded["audio"], start, clip_frames)
    out["mouth_box"] = torch.tensor(box, dtype=torch.float32)
    if "text" in decoded:
        out["text"] = torch.from_numpy(decoded["text"].astype(np.float32))
    if CAPTION_EXT in decoded:
        out[CAPTION_EXT] = decoded[CAPTION_EXT]
    return out


def _reference(decoded: dict[str, Any], start: int, clip_frames: int, size: int | None, meta: dict) -> torch.Tensor:
    """The stored `ref.*` frame, else the clip's frame farthest in time from the sampled window."""
    image = decoded["ref"]
    if image is None:
        if decoded["video"] is None or decoded.get("video_start", 0) != 0:
            raise SampleError(f"sample {decoded['key']}: no ref.png/ref.jpg and no whole video to take one from")
        frames = decoded["video"]
        image = frames[0] if start >= len(frames) - (start + clip_frames) else frames[-1]
    ref, _ = _square(to_unit_range(image), list(meta["mouth_box"]), size)
    return ref.contiguous()


def _add_precomputed(out: dict[str, Any], decoded: dict[str, Any], clip_frames: int) -> None:
    key, meta = decoded["key"], decoded["meta"]
    if "latents" not in decoded or "ref_latent" not in decoded:
        raise SampleError(f"sample {key}: use_precomputed needs latents.npy and ref_latent.npy")
    factor = int(meta.get("latent_temporal_factor", 4))
    if (clip_frames - 1) % factor:
        raise SampleError(f"sample {key}: clip_frames={clip_frames} is not 1 + {factor} * k (latent frames)")
    latent_frames = 1 + (clip_frames - 1) // factor
    latents = decoded["latents"]
    if latents.ndim != 4 or latents.shape[1] < latent_frames:
        raise SampleError(f"sample {key}: latents.npy shape {latents.shape}, expected [C, >={latent_frames}, h, w]")
    out["latents"] = torch.from_numpy(latents[:, :latent_frames].astype(np.float32))
    out["ref_latent"] = torch.from_numpy(decoded["ref_latent"].astype(np.float32))
    if "audio_feats" in decoded:
        feats = decoded["audio_feats"]
        if feats.shape[0] < clip_frames:
            raise SampleError(f"sample {key}: audio_feats.npy has {feats.shape[0]} frames < {clip_frames}")
        out["audio_feats"] = torch.from_numpy(feats[:clip_frames].astype(np.float32))


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips into the batch contract of docs/INTERFACES.md.

    Optional entries (`mouth`, `text`, the captions `txt` as a list of str) appear only when every sample
    has them, so a batch never mixes present and missing ground truth: a batch with some captions only
    trains on the null text (`mixed_captions` counts such batches).
    """
    batch: dict[str, Any] = {"meta": {field: [s["meta"][field] for s in samples] for field in META_FIELDS}}
    names = set(samples[0]) - {"meta"}
    for name in sorted(names):
        if name == CAPTION_EXT:
            if all(name in s for s in samples):
                batch[name] = [s[name] for s in samples]
        elif all(name in s for s in samples):
            try:
                batch[name] = torch.stack([s[name] for s in samples])
            except RuntimeError as err:  # e.g. text of different lengths
                if name in ("mouth", "text"):
                    continue
                raise UserError(f"batch: cannot stack {name!r} across samples ({err}); set the data "
                                "module's `size` so every clip has the same shape") from None
    return batch


def mixed_captions(samples: Sequence[dict[str, Any]]) -> bool:
    """Some clips of the batch have a caption and others not (the batch then goes without captions)."""
    captioned = sum(CAPTION_EXT in s for s in samples)
    return 0 < captioned < len(samples)
