"""One live session's bookkeeping: its audio intake (bounded), where each frame's audio came from, and its
figures. Its AvatarStreamer lives in a worker (workers.py); app.py moves the bytes. Everything here runs
on the event loop, so it is tested directly, without a network or a worker.
"""
from __future__ import annotations

import io
import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from lit_avatar.inference.audio_stream import SAMPLES_PER_FRAME
from lit_avatar.serve.intake import AudioIntake
from lit_avatar.serve.options import FPS, SAMPLE_RATE, ServeOptions

__all__ = ["LiveSession", "SentFrame", "encode_image"]


def encode_image(frame: np.ndarray, image_format: str, jpeg_quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> JPEG or PNG bytes (what the page draws)."""
    from PIL import Image

    out = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(frame).save(out, "JPEG", quality=jpeg_quality)
    else:
        Image.fromarray(frame).save(out, "PNG", compress_level=1)
    return out.getvalue()


@dataclass
class SentFrame:
    """A generated frame on its way out: index, image bytes, and the peer sample its audio ended at."""

    index: int
    image: bytes
    peer_sample: int  # -1 for frames past the audio (the final flush)
    arrived: float | None  # when the frame's last audio sample reached the server


class LiveSession:
    """Audio in, frames out, with bounded state and the figures the page and tests read.

    Args:
        options: limits and policies.
        session_id: how logs and figures name it.
        clock: seconds (monotonic); tests may inject one.
    """

    def __init__(self, options: ServeOptions, session_id: str = "", clock=time.perf_counter) -> None:
        self.options = options
        self.session_id = session_id
        self.clock = clock
        self.intake = AudioIntake(options.max_backlog_samples)
        self.started = clock()
        self.frames_made = 0
        self.frames_sent = 0
        self.frames_steady = 0  # frames sent that were made from received audio
        self.frames_dropped = 0  # encoded frames a slow reader never took
        self.compute_seconds = 0.0
        self.first_sent: float | None = None
        self.first_burst = 0  # frames of the first block (excluded from the steady rate)
        self.last_sent: float | None = None
        self._recent_sends: deque[float] = deque()  # send times in the last 2 s
        self.latencies: deque[float] = deque(maxlen=20_000)  # seconds, audio arrival -> frame sent
        self.end_reason: str | None = None
        self.generating = False  # the server is turning this session's audio into frames
        self.prompt: str | None = None  # the prompt the frames are made under (None: the null text)
        self.pending_prompt: str | None = None  # received, not yet handed to the streamer (the latest wins)
        self.prompt_changes = 0
        self.prompt_from_frame: int | None = None  # the first frame made under the current prompt

    def prompt_applied(self, text: str, first_frame: int) -> dict:
        """The streamer took `text` for its frames from `first_frame` on; returns the message for the peer."""
        self.prompt, self.prompt_from_frame = text, first_frame
        self.prompt_changes += 1
        return {"type": "prompt_applied", "text": text, "frame": first_frame}

    def receive_audio(self, samples: np.ndarray) -> int:
        """Queue audio from the peer; return the samples dropped by the backlog bound."""
        return self.intake.add(samples, self.clock())

    def take_audio(self, limit: int | None = None) -> np.ndarray:
        """The next audio for the streamer: at most `options.step_audio_s` (and `limit` samples), so that a
        session behind real time keeps dropping its oldest audio and works on fresh audio."""
        step = self.options.step_audio_samples
        return self.intake.take(step if limit is None else min(step, limit))

    def trace(self, first_frame: int, images: list[bytes], compute_seconds: float = 0.0) -> list[SentFrame]:
        """Attach to each new frame the peer sample and arrival time of its last audio sample."""
        self.compute_seconds += compute_seconds
        self.frames_made = max(self.frames_made, first_frame + len(images))
        if not self.first_burst:
            self.first_burst = len(images)  # the first block arrives at once: not part of the steady rate
        out = []
        for offset, image in enumerate(images):
            index = first_frame + offset
            source = self.intake.source((index + 1) * SAMPLES_PER_FRAME - 1)
            out.append(SentFrame(index, image, source.peer_sample if source else -1,
                                 source.arrived if source else None))
        return out

    def mark_sent(self, frame: SentFrame) -> None:
        now = self.clock()
        self.frames_sent += 1
        if frame.arrived is not None:  # the steady rate leaves out the final flush (sent at once, past the audio)
            self.frames_steady += 1
            if self.first_sent is None:
                self.first_sent = now
            self.last_sent = now
            self.latencies.append(now - frame.arrived)
        self._recent_sends.append(now)
        while self._recent_sends and self._recent_sends[0] < now - 2.0:
            self._recent_sends.popleft()

    def stats(self) -> dict:
        """Live figures: what the page shows and what the server keeps when the session ends."""
        now = self.clock()
        recent = [t for t in self._recent_sends if t >= now - 2.0]
        lat = list(self.latencies)
        steady = None
        if self.first_sent is not None and self.last_sent is not None and self.last_sent > self.first_sent:
            steady = (self.frames_steady - self.first_burst) / (self.last_sent - self.first_sent)
        return {
            "session": self.session_id,
            "seconds": now - self.started,
            "frames_sent": self.frames_sent,
            "fps_recent": len(recent) / 2.0 if self.first_sent is not None and now - self.first_sent >= 2.0 else None,
            # frames/s from the first to the last frame made from received audio: 25 when keeping up
            # (the audio's own rate), less when audio was dropped
            "fps_steady": steady,
            "latency_ms_last": 1000 * lat[-1] if lat else None,
            "latency_ms_median": 1000 * statistics.median(lat) if lat else None,
            "latency_ms_p90": 1000 * float(np.percentile(lat, 90)) if lat else None,
            "latency_ms_max": 1000 * max(lat) if lat else None,
            "audio_received_s": self.intake.received_samples / SAMPLE_RATE,
            "audio_dropped_s": self.intake.dropped_samples / SAMPLE_RATE,
            "backlog_s": self.intake.pending_samples / SAMPLE_RATE,
            "frames_dropped": self.frames_dropped,
            "compute_s": self.compute_seconds,
            # frames/s this session's streamer made per second of its own compute (a worker to itself)
            "capacity_fps": self.frames_made / self.compute_seconds if self.compute_seconds > 0 else None,
            "realtime_fps": FPS,
            "prompt": self.prompt,
            "prompt_changes": self.prompt_changes,
            "prompt_from_frame": self.prompt_from_frame,
            "end_reason": self.end_reason,
        }
