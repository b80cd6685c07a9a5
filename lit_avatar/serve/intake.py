"""A session's audio intake: bounded backlog (drop-oldest), and where each generated frame's audio came from.

Audio waits here only while the streamer is busy with earlier audio. If the session cannot keep up, the
backlog would grow without bound and every later frame would lag further behind the speaker; instead the
oldest pending audio beyond `max_samples` is dropped (whole or in part), counted, and the session goes on
from the freshest audio. Dropped audio never reaches the streamer, so the video skips it: frames stay
lip-synced to the audio they were made from, and latency stays bounded.

The streamer sees the kept audio as one timeline. For every piece handed over, the intake remembers its
place on that timeline, its index in what the peer sent, and when it arrived, so a frame can be traced to
the arrival of its audio (audio-to-frame latency, measured at the server) and to the peer's own sample count
(the page measures the same latency on its own clock).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["AudioIntake", "AudioSource"]


@dataclass
class _Piece:
    samples: np.ndarray
    peer_start: int  # index of samples[0] among all samples the peer sent
    arrived: float


@dataclass(frozen=True)
class AudioSource:
    """Where a stream sample came from: its index among the peer's samples and its arrival time."""

    peer_sample: int
    arrived: float


class AudioIntake:
    """Pending audio with a drop-oldest bound, and the map from the streamer's timeline back to the peer.

    Args:
        max_samples: most samples pending at once (received, not yet taken).
    """

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        self.max_samples = max_samples
        self._pending: deque[_Piece] = deque()
        self.pending_samples = 0
        self.received_samples = 0
        self.dropped_samples = 0
        self.taken_samples = 0  # length of the streamer's timeline
        # (stream_start, stream_end, peer_start, arrived) of pieces taken and not yet traced past
        self._timeline: deque[tuple[int, int, int, float]] = deque()

    def add(self, samples: np.ndarray, now: float) -> int:
        """Queue samples that arrived at `now`; return how many (oldest) pending samples were dropped."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size:
            self._pending.append(_Piece(samples, self.received_samples, now))
            self.pending_samples += samples.size
            self.received_samples += samples.size
        dropped = 0
        while self.pending_samples > self.max_samples:
            piece = self._pending[0]
            cut = min(piece.samples.size, self.pending_samples - self.max_samples)
            if cut == piece.samples.size:
                self._pending.popleft()
            else:
                piece.samples = piece.samples[cut:]
                piece.peer_start += cut
            self.pending_samples -= cut
            dropped += cut
        self.dropped_samples += dropped
        return dropped

    def take(self, limit: int | None = None) -> np.ndarray:
        """The oldest pending samples, at most `limit` (all when None), in order; they join the streamer's
        timeline."""
        parts, count = [], 0
        while self._pending and (limit is None or count < limit):
            piece = self._pending[0]
            n = piece.samples.size if limit is None else min(piece.samples.size, limit - count)
            start = self.taken_samples
            self.taken_samples += n
            self._timeline.append((start, self.taken_samples, piece.peer_start, piece.arrived))
            parts.append(piece.samples[:n])
            if n == piece.samples.size:
                self._pending.popleft()
            else:
                piece.samples = piece.samples[n:]
                piece.peer_start += n
            count += n
        self.pending_samples -= count
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def source(self, stream_sample: int) -> AudioSource | None:
        """Trace a sample of the streamer's timeline (queried in increasing order); None past the audio
        taken (the silence a final flush pads with). Pieces before it are forgotten: memory stays bounded."""
        while self._timeline and self._timeline[0][1] <= stream_sample:
            self._timeline.popleft()
        if not self._timeline or stream_sample < self._timeline[0][0]:
            return None
        start, _, peer_start, arrived = self._timeline[0]
        return AudioSource(peer_start + stream_sample - start, arrived)
