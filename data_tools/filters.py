"""Why a file or clip is left out, and the audio checks that decide some of it.

Every rejection carries one reason from REASONS, so the manifest can count them and a user can
grep for them; `detail` says what was measured.
"""
from __future__ import annotations

import numpy as np

REASONS = {
    "broken": "the file cannot be opened or decoded",
    "truncated": "the stream ends before the length its header claims",
    "no_audio": "the file has no audio stream",
    "too_short": "shorter than one clip",
    "no_face": "no face found on enough of the sampled frames",
    "face_too_small": "the face is smaller than --min-face-px",
    "silent": "audio RMS below --silence-db",
    "audio_short": "the audio ends before the clip does",
    "error": "an unexpected error while processing (see detail)",
}


class Rejected(Exception):
    """A file or clip that does not go into the shards.

    Args:
        reason: a key of REASONS.
        detail: what was measured, one line.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def rms_db(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence).

    Args:
        audio: float waveform in [-1, 1].
    """
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def clip_audio(audio: np.ndarray, start: int, length: int, tolerance: int) -> np.ndarray:
    """The clip's samples; a missing tail up to `tolerance` samples is zero-padded (codec padding
    and rounding make audio a few ms shorter than video), a longer gap is rejected.

    Args:
        audio: the whole file's waveform.
        start: first sample of the clip.
        length: samples in the clip.
        tolerance: largest gap that is padded.
    """
    piece = audio[start:start + length]
    missing = length - piece.size
    if missing > tolerance:
        raise Rejected("audio_short", f"audio ends {missing / 16000:.3f} s before the clip")
    if missing > 0:
        piece = np.concatenate([piece, np.zeros(missing, piece.dtype)])
    return piece
