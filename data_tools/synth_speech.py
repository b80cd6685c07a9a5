"""Speech-like sound for SynthTalk: voiced syllables with a pitch contour and formants, and pauses.

It is not speech, but it has what lip sync depends on: a syllable rhythm whose loudness envelope
rises and falls several times a second, separated by silences. Each syllable's carrier is normalised
to unit RMS before its envelope is applied, so the frame-wise loudness follows the envelope exactly and
the mouth opening (derived from the same envelope) is a faithful ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# F1, F2, F3 (Hz) of a few vowels (adult averages); each syllable takes one
VOWEL_FORMANTS = np.array([
    [730, 1090, 2440],  # a
    [270, 2290, 3010],  # i
    [300, 870, 2240],   # u
    [530, 1840, 2480],  # e
    [570, 840, 2410],   # o
], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
FORMANT_WEIGHTS = np.array([1.0, 0.6, 0.3])


@dataclass
class Speech:
    """A synthetic utterance.

    Attributes:
        audio: float32 [S] in [-1, 1].
        envelope: float64 [S] syllable amplitude envelope in [0, 1] (0 in pauses).
        syllables: list of (start_s, end_s) times.
    """

    audio: np.ndarray
    envelope: np.ndarray
    syllables: list[tuple[float, float]]


def _syllable_times(rng: np.random.Generator, seconds: float) -> list[tuple[float, float]]:
    """Alternate pauses (mostly short, sometimes long) and syllables of 0.12-0.28 s."""
    times, t = [], float(rng.uniform(0.0, 0.2))
    while t < seconds:
        length = float(rng.uniform(0.12, 0.28))
        times.append((t, min(t + length, seconds)))
        short = rng.random() < 0.7
        t += length + float(rng.uniform(0.04, 0.12) if short else rng.uniform(0.25, 0.6))
    return [(a, b) for a, b in times if b - a > 0.04]


def _formant_gain(freqs: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Resonance gain at each harmonic frequency: a sum of Lorentzian peaks.

    Args:
        freqs: [K, S] harmonic frequencies.
        formants: [3, S] formant centre frequencies.
    """
    gain = np.zeros_like(freqs)
    for j in range(3):
        gain += FORMANT_WEIGHTS[j] / (1.0 + ((freqs - formants[j]) / FORMANT_BANDWIDTHS[j]) ** 2)
    return gain


def synth_speech(rng: np.random.Generator, seconds: float, base_pitch: float, sample_rate: int = 16000) -> Speech:
    """Synthesise `seconds` of speech-like sound.

    Args:
        rng: random source (syllable timing, vowels, pitch glides, loudness).
        seconds: duration.
        base_pitch: the speaker's mean f0 in Hz (an identity trait).
        sample_rate: output rate in Hz.
    """
    count = int(round(seconds * sample_rate))
    t = np.arange(count) / sample_rate
    syllables = _syllable_times(rng, seconds)
    envelope = np.zeros(count)
    f0 = np.full(count, float(base_pitch))
    formants = np.repeat(VOWEL_FORMANTS[0][:, None], count, axis=1)
    spans = []
    for start, end in syllables:
        i0, i1 = int(start * sample_rate), min(int(end * sample_rate), count)
        if i1 <= i0:
            continue
        x = (t[i0:i1] - start) / (end - start)
        loudness = rng.uniform(0.45, 1.0)
        envelope[i0:i1] = loudness * np.clip(np.sin(np.pi * x), 0.0, 1.0) ** 0.7
        onset = base_pitch * rng.uniform(0.9, 1.15)
        f0[i0:i1] = onset * (1.0 + rng.uniform(-0.15, 0.1) * x + 0.02 * np.sin(2 * np.pi * 5.5 * t[i0:i1]))
        vowel = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))] * rng.uniform(0.92, 1.08)
        formants[:, i0:i1] = vowel[:, None]
        spans.append((i0, i1))
    harmonics = np.arange(1, int(0.45 * sample_rate / (0.8 * base_pitch)) + 1)[:, None]
    freqs = harmonics * f0[None, :]
    amplitude = _formant_gain(freqs, formants) / harmonics ** 0.5
    amplitude[freqs > 0.45 * sample_rate] = 0.0
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    carrier = (amplitude * np.sin(harmonics * phase[None, :])).sum(axis=0)
    carrier += 0.05 * rng.standard_normal(count)  # breathiness
    for i0, i1 in spans:
        carrier[i0:i1] /= np.sqrt(np.mean(carrier[i0:i1] ** 2)) + 1e-9
    audio = envelope * carrier + 0.002 * rng.standard_normal(count)
    if spans:  # peak at 0.7: loud but never clipped
        audio *= 0.7 / max(float(np.abs(audio).max()), 1e-6)
    return Speech(audio=np.clip(audio, -1, 1).astype(np.float32), envelope=envelope, syllables=syllables)


def opening_per_frame(envelope: np.ndarray, num_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """Mouth opening per video frame in [0, 1]: the RMS of the envelope over the frame's audio.

    Args:
        envelope: [S] syllable envelope in [0, 1].
        num_frames: frames to produce (the envelope is zero-padded past its end).
        fps: video rate.
        sample_rate: envelope rate.
    """
    hop = sample_rate / fps
    padded = np.zeros(int(np.ceil(num_frames * hop)))
    padded[:min(len(envelope), len(padded))] = envelope[:len(padded)]
    edges = np.round(np.arange(num_frames + 1) * hop).astype(int)
    squares = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    mean_square = (squares[edges[1:]] - squares[edges[:-1]]) / np.maximum(np.diff(edges), 1)
    return np.clip(np.sqrt(mean_square), 0.0, 1.0)
