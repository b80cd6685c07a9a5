"""Audio features for a live stream, computed per block over a bounded trailing window.

Why per block over a fixed window: an encoder is a function of the samples it is given (STFT padding,
the +-2 frame window's edge replication, per-utterance normalisation, wav2vec2's global attention). If
features were computed over whatever had arrived so far, they would depend on how the audio was chunked.
Here the features of block [start, end) always come from the samples of video frames
[start - context, end + lookahead), so a stream gives the same features whatever its chunk sizes, and
memory stays bounded: samples older than the next window are dropped.

Interior frames match the encoder run over the whole file when the encoder is local (MelAudioEncoder
with normalize=False: each frame's log-mel needs the samples of its own frame plus 256 on each side,
and the window needs 2 frames on each side, so context >= 3 and lookahead >= 3 frames are exact). With
per-utterance normalisation the statistics come from the window (a few seconds, about the length of the
training clips) instead of the whole file; wav2vec2 likewise sees the window rather than the file.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

SAMPLES_PER_FRAME = 640  # 16 kHz audio, 25 fps video

__all__ = ["BlockAudioFeatures", "PrecomputedAudioFeatures", "SAMPLES_PER_FRAME", "edge_error_curve"]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


class BlockAudioFeatures:
    """Buffer a 16 kHz stream and give the windowed features [1, n, W, D] of any block of video frames.

    Args:
        encoder: an AudioEncoder (`encoder(audio [1, S], num_frames=T) -> [1, T, W, D]`), or None to
            only keep time (features() then returns None).
        context_frames: video frames of audio before a block that the encoder sees (2 s = 50).
        lookahead_frames: video frames after a block that must have arrived before it is computed; 3
            covers the +-2 frame window plus the STFT's half window.
    """

    def __init__(self, encoder: nn.Module | None, context_frames: int = 50, lookahead_frames: int = 3) -> None:
        if context_frames < 0 or lookahead_frames < 0:
            raise ValueError("context_frames and lookahead_frames must be >= 0")
        self.encoder = encoder
        self.context_frames = context_frames
        self.lookahead_frames = lookahead_frames
        self._buffer = np.zeros(1 << 16, dtype=np.float32)
        self._length = 0  # valid samples in _buffer
        self._offset = 0  # absolute index of _buffer[0]
        self.total_samples = 0
        self.finished = False

    @property
    def buffered_samples(self) -> int:
        """Samples held now (the bounded-memory check reads this)."""
        return self._length

    def push(self, samples: np.ndarray) -> None:
        """Append mono float32 samples (any count).

        Args:
            samples: 1-D array at 16 kHz.
        """
        if self.finished:
            raise RuntimeError("push after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        need = self._length + samples.size
        if need > self._buffer.size:
            grown = np.zeros(max(need, 2 * self._buffer.size), dtype=np.float32)
            grown[: self._length] = self._buffer[: self._length]
            self._buffer = grown
        self._buffer[self._length:need] = samples
        self._length = need
        self.total_samples += samples.size

    def finish(self) -> None:
        """No more audio: blocks past the end may now be computed, padded with silence."""
        self.finished = True

    def ready(self, end: int) -> bool:
        """Whether the block ending at video frame `end` (exclusive) can be computed now."""
        return self.finished or self.total_samples >= (end + self.lookahead_frames) * SAMPLES_PER_FRAME

    def _samples(self, first: int, last: int) -> np.ndarray:
        """Absolute samples [first, last), zeros beyond what arrived (only after finish)."""
        if first < self._offset:
            raise RuntimeError(f"samples from {first} were already dropped (buffer starts at {self._offset})")
        out = np.zeros(last - first, dtype=np.float32)
        have = min(last, self._offset + self._length) - first
        if have > 0:
            out[:have] = self._buffer[first - self._offset:first - self._offset + have]
        return out

    def features(self, start: int, end: int) -> torch.Tensor | None:
        """Windowed features of video frames [start, end): [1, end - start, W, D] float32.

        Args:
            start: first video frame of the block.
            end: one past its last frame.
        """
        if not self.ready(end):
            raise RuntimeError(f"audio for frames up to {end + self.lookahead_frames} has not arrived")
        if self.encoder is None:
            return None
        first = max(0, start - self.context_frames)
        last = end + self.lookahead_frames
        audio = torch.from_numpy(self._samples(first * SAMPLES_PER_FRAME, last * SAMPLES_PER_FRAME))
        audio = audio.to(_device_of(self.encoder))[None]
        feats = self.encoder(audio, num_frames=last - first)
        return feats[:, start - first:end - first].float()

    def drop_before(self, frame: int) -> None:
        """Forget samples no later block needs (the next block starts at `frame`).

        Args:
            frame: first video frame of the next block.
        """
        keep_from = max(0, frame - self.context_frames) * SAMPLES_PER_FRAME
        drop = min(keep_from - self._offset, self._length)
        if drop <= 0:
            return
        self._buffer[: self._length - drop] = self._buffer[drop:self._length]
        self._length -= drop
        self._offset += drop
        if self._buffer.size > 4 * max(self._length, 1 << 16):  # give back room a large push left behind
            self._buffer = self._buffer[: max(2 * self._length, 1 << 16)].copy()


class PrecomputedAudioFeatures(BlockAudioFeatures):
    """Features computed beforehand (e.g. over the whole file), served block by block with the same
    interface; for offline generation and for measuring what the bounded window costs.

    Args:
        features: [T, W, D] windowed features of every video frame of the audio.
        lookahead_frames: frames of audio after a block that must have arrived (keeps the stream's timing).
    """

    def __init__(self, features: torch.Tensor, lookahead_frames: int = 3) -> None:
        super().__init__(None, context_frames=0, lookahead_frames=lookahead_frames)
        self._features = features

    def features(self, start: int, end: int) -> torch.Tensor:
        if not self.ready(end):
            raise RuntimeError(f"audio for frames up to {end + self.lookahead_frames} has not arrived")
        feats = self._features[start:end]
        if feats.shape[0] < end - start:  # past the end of the audio: repeat the last frame, like silence padding
            pad = feats[-1:].expand(end - start - feats.shape[0], *feats.shape[1:])
            feats = torch.cat([feats, pad])
        return feats[None].float()


@torch.no_grad()
def edge_error_curve(encoder: nn.Module, audio: torch.Tensor, window_frames: int,
                     stride: int | None = None) -> list[dict]:
    """Relative error of features computed over a bounded window against the whole clip's, by distance from
    the window's nearer edge.

    Windows of `window_frames` video frames slide over the clip (every `stride` frames); every frame of
    every window is compared with the same frame of the whole-clip features, and frame t of window [a, b)
    is min(t - a, b - 1 - t) frames from its nearer edge (an edge on the clip's own start or end is not a
    window edge). The streamer uses frames `lookahead` from the window's right edge and `context` from its
    left, so this curve says what a (context, lookahead) choice costs. Error of a frame:
    ||f_window - f_whole|| / ||f_whole|| over its [W, D] features.

    Args:
        encoder: an AudioEncoder.
        audio: [1, S] 16 kHz samples.
        window_frames: video frames per window.
        stride: frames between window starts (default window_frames // 4).

    Returns:
        [{"distance": d, "mean_rel_error": e, "max_rel_error": m, "frames": n}] sorted by d.
    """
    total = audio.shape[1] // SAMPLES_PER_FRAME
    if window_frames >= total:
        raise ValueError(f"window of {window_frames} frames: the clip must be longer ({total} frames)")
    whole = encoder(audio[:, : total * SAMPLES_PER_FRAME], num_frames=total)[0].float()
    stride = stride or max(1, window_frames // 4)
    errors: dict[int, list[float]] = {}
    for first in range(0, total - window_frames + 1, stride):
        last = first + window_frames
        window = audio[:, first * SAMPLES_PER_FRAME:last * SAMPLES_PER_FRAME]
        feats = encoder(window, num_frames=window_frames)[0].float()
        for i in range(window_frames):
            t = first + i
            distances = ([i] if first > 0 else []) + ([window_frames - 1 - i] if last < total else [])
            if not distances:
                continue
            err = (feats[i] - whole[t]).norm() / whole[t].norm().clamp_min(1e-12)
            errors.setdefault(min(distances), []).append(float(err))
    return [{"distance": d, "mean_rel_error": float(np.mean(v)), "max_rel_error": float(np.max(v)), "frames": len(v)}
            for d, v in sorted(errors.items())]
