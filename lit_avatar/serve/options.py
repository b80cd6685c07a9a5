"""Typed limits and policies of the live server, validated once at start."""
from __future__ import annotations

from dataclasses import dataclass

from lit_avatar.errors import UserError

SAMPLE_RATE = 16000
FPS = 25


@dataclass
class ServeOptions:
    """What one server accepts and how a session that falls behind real time is kept bounded.

    Args:
        max_sessions: concurrent sessions; the next peer is refused with a message ("server busy").
        token: when set, /ws and /stats need `?token=` equal to it (compared in constant time).
        idle_timeout_s: a session that sends no audio for this long, with nothing left to generate or send, is
            ended (the clock does not run while the server still works on its audio).
        max_message_bytes: largest WebSocket message a peer may send (16-bit audio: 2 bytes a sample).
        max_backlog_s: audio received but not yet generated, at most; beyond it the OLDEST pending audio is
            dropped (counted and reported), so a slow session catches up with the speaker instead of
            lagging further behind (latency stays bounded by about this plus one block's compute).
        step_audio_s: audio handed to the streamer per call, at most (a session behind real time then goes
            on from fresh audio, and one call's compute adds little to the latency).
        max_queued_frames: encoded frames waiting for a slow reader, at most; beyond it the oldest are dropped.
        image_format: "jpeg" (small, lossy) or "png" (lossless, larger) for the frames sent.
        jpeg_quality: 1..95.
        stats_interval_s: how often a session sends its live figures.
        heartbeat_s: WebSocket ping interval; a peer that vanished without closing is found by it.
        seed: noise seed of every session's stream (the same audio gives the same frames).
    """

    max_sessions: int = 4
    token: str | None = None
    idle_timeout_s: float = 30.0
    max_message_bytes: int = 64 * 1024
    max_backlog_s: float = 0.5
    step_audio_s: float = 0.25
    max_queued_frames: int = 50
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    stats_interval_s: float = 1.0
    heartbeat_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise UserError(f"--max-sessions {self.max_sessions}: expected >= 1")
        if self.token is not None and not self.token.strip():
            raise UserError("--token: expected a non-empty string")
        if not self.idle_timeout_s > 0:
            raise UserError(f"--idle-timeout {self.idle_timeout_s}: expected a positive number of seconds")
        if not 2 <= self.max_message_bytes <= 16 * 1024 * 1024:
            raise UserError(f"--max-message-kib: {self.max_message_bytes} bytes is outside 2 B..16 MiB")
        if not 0.1 <= self.max_backlog_s <= 60:
            raise UserError(f"--max-backlog {self.max_backlog_s}: expected 0.1..60 seconds")
        if not 0.04 <= self.step_audio_s:
            raise UserError(f"step_audio_s {self.step_audio_s}: expected >= 0.04 s (one video frame)")
        if self.max_queued_frames < 1:
            raise UserError(f"max_queued_frames {self.max_queued_frames}: expected >= 1")
        if self.image_format not in ("jpeg", "png"):
            raise UserError(f"--image-format {self.image_format!r}: expected jpeg or png")
        if not 1 <= self.jpeg_quality <= 95:
            raise UserError(f"--jpeg-quality {self.jpeg_quality}: expected 1..95")

    @property
    def max_backlog_samples(self) -> int:
        return int(round(self.max_backlog_s * SAMPLE_RATE))

    @property
    def step_audio_samples(self) -> int:
        return int(round(self.step_audio_s * SAMPLE_RATE))
