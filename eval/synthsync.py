"""SynthSync: exact lip-sync measurement on SynthTalk videos.

SynthTalk draws the mouth as a dark filled ellipse on lighter skin inside a known box, and its audio
drives the opening. So lip sync can be measured without any learned network: measure how much of the
mouth box is dark in each frame and correlate that with the audio's loudness envelope.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lit_avatar.errors import UserError

# ITU-R BT.601 luma weights; any fixed weighting works, this one is the usual choice.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _crop_box(frames: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Return the luminance inside the normalised box as float64 [T, h, w] in [0, 1]."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise UserError(f"frames: expected an array [T,H,W,3], got shape {tuple(frames.shape)}")
    if len(box) != 4:
        raise UserError(f"mouth_box: expected 4 numbers (x0,y0,x1,y1) normalised to [0,1], got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise UserError(f"mouth_box: expected 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {list(box)}")
    _, h, w, _ = frames.shape
    c0, c1 = int(np.floor(x0 * w)), max(int(np.ceil(x1 * w)), int(np.floor(x0 * w)) + 1)
    r0, r1 = int(np.floor(y0 * h)), max(int(np.ceil(y1 * h)), int(np.floor(y0 * h)) + 1)
    crop = np.asarray(frames[:, r0:r1, c0:c1, :], dtype=np.float64)
    if frames.dtype == np.uint8:
        crop = crop / 255.0
    return crop @ _LUMA


def mouth_opening(frames: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Fraction of dark pixels in the mouth box per frame.

    "Dark" is judged against the box's own luminance distribution, so the measure does not depend on
    skin colour or exposure: skin level = the 90th percentile of each frame's box (the mouth never fills
    the whole box), dark level = the 2nd percentile over the whole video (the open mouth's interior), and a
    pixel counts as dark below their midpoint. A box with no contrast gives zeros.

    Args:
        frames: video frames [T, H, W, 3], uint8 (0-255) or float (0-1), RGB.
        box: mouth box (x0, y0, x1, y1) normalised to [0, 1].

    Returns:
        float64 [T]: fraction of the box covered by dark pixels, in [0, 1].
    """
    luma = _crop_box(np.asarray(frames), box)
    t = luma.shape[0]
    flat = luma.reshape(t, -1)
    skin = np.percentile(flat, 90, axis=1)
    dark = np.percentile(flat, 2)
    contrast = skin - dark
    if float(contrast.max(initial=0.0)) < 1e-3:
        return np.zeros(t, dtype=np.float64)
    threshold = 0.5 * (skin + dark)
    opening = (flat < threshold[:, None]).mean(axis=1)
    # frames whose own box is flat (e.g. a blank frame) have no mouth to measure
    opening[contrast < 1e-3] = 0.0
    return opening


def audio_envelope(audio: np.ndarray, num_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """RMS loudness per video frame, lightly smoothed so that it is comparable with a mouth opening.

    Args:
        audio: mono waveform float [S] at `sample_rate`.
        num_frames: number of video frames the envelope must cover (zero-padded past the audio's end).
        fps: video frame rate.
        sample_rate: audio sample rate in Hz.

    Returns:
        float64 [num_frames].
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    hop = sample_rate / fps
    env = np.zeros(num_frames, dtype=np.float64)
    for i in range(num_frames):
        seg = audio[int(round(i * hop)): int(round((i + 1) * hop))]
        if seg.size:
            env[i] = np.sqrt(np.mean(seg * seg))
    if num_frames >= 3:
        # 3-tap [1,2,1]/4 smoothing with replicated edges: removes frame-boundary jitter, keeps syllables
        padded = np.concatenate([env[:1], env, env[-1:]])
        env = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return env


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either series is constant (no evidence of sync)."""
    if a.size < 2:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def lagged_correlation(opening: np.ndarray, envelope: np.ndarray, lag: int) -> float:
    """Pearson r between opening[t] and envelope[t - lag] over the overlap.

    A positive lag means the mouth moves `lag` frames after the sound.
    """
    n = min(opening.size, envelope.size)
    if lag >= 0:
        return _pearson(opening[lag:n], envelope[: n - lag])
    return _pearson(opening[: n + lag], envelope[-lag:n])


def synthsync(
    frames: np.ndarray,
    box: Sequence[float],
    audio: np.ndarray,
    fps: float = 25.0,
    max_lag: int = 5,
    sample_rate: int = 16000,
) -> dict[str, float]:
    """Correlate the measured mouth opening with the audio envelope.

    Args:
        frames: video frames [T, H, W, 3] (uint8 or float in [0, 1]).
        box: mouth box (x0, y0, x1, y1) normalised to [0, 1].
        audio: mono waveform [S] at `sample_rate`, aligned with frame 0.
        fps: video frame rate.
        max_lag: lags -max_lag..max_lag (frames) searched for the best correlation.
        sample_rate: audio sample rate in Hz.

    Returns:
        dict with r (Pearson r at lag 0), best_r (highest r over lags) and best_lag (frames; positive when
        the mouth follows the sound).
    """
    opening = mouth_opening(frames, box)
    env = audio_envelope(audio, opening.size, fps=fps, sample_rate=sample_rate)
    return synthsync_from_series(opening, env, max_lag=max_lag)


def batch_synthsync(frames: np.ndarray, boxes: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """Mean SynthSync r of generated clips against their own audio and against mismatched audio.

    Mismatched audio is the previous clip's (a rotation of the batch); a single clip is compared with its
    audio reversed in time, which keeps the envelope's statistics but breaks its timing. The gap between
    the two is the evidence of lip sync; the shuffled figure is the chance level for this kind of motion.

    Args:
        frames: uint8 [B, T, H, W, 3] at 25 fps.
        boxes: [B, 4] normalised mouth boxes.
        audio: [B, S] 16 kHz waveforms aligned with frame 0.

    Returns:
        {"r": mean r with the clips' own audio, "r_shuffled": mean r with mismatched audio}.
    """
    b = frames.shape[0]
    shuffled = np.roll(audio, 1, axis=0) if b > 1 else audio[:, ::-1]
    r_true = [synthsync(frames[i], boxes[i].tolist(), audio[i])["r"] for i in range(b)]
    r_shuf = [synthsync(frames[i], boxes[i].tolist(), shuffled[i])["r"] for i in range(b)]
    return {"r": float(np.mean(r_true)), "r_shuffled": float(np.mean(r_shuf))}


def synthsync_from_series(opening: np.ndarray, envelope: np.ndarray, max_lag: int = 5) -> dict[str, float]:
    """The correlation part of `synthsync`, on precomputed series (also used for ground-truth openings).

    Args:
        opening: mouth opening per frame [T].
        envelope: audio envelope per frame [T].
        max_lag: lags -max_lag..max_lag searched.
    """
    opening = np.asarray(opening, dtype=np.float64)
    envelope = np.asarray(envelope, dtype=np.float64)
    best_r, best_lag = -np.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        r = lagged_correlation(opening, envelope, lag)
        # ties go to the smaller |lag|, the more conservative answer
        if r > best_r + 1e-12 or (abs(r - best_r) <= 1e-12 and abs(lag) < abs(best_lag)):
            best_r, best_lag = r, lag
    return {"r": lagged_correlation(opening, envelope, 0), "best_r": float(best_r), "best_lag": int(best_lag)}
