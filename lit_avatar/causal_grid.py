"""The causal grid: where every video frame, latent frame, block, seam and URCR reset sits in time.

Wan's causal VAE makes latent frame 0 from video frame 0 alone and every later latent frame from the next
`temporal_factor` (tf) video frames. A block of `frames_per_block` (fpb) latent frames therefore spans
1 + tf*(fpb-1) video frames first and tf*fpb after that: for tf 4, fpb 3 the blocks start at video frames
0, 9, 21, 33, ... Video runs at `fps` frames per audio second.

Everything that asks where blocks meet or how many frames some audio makes (the streamer, the rollout's URCR
positions, the seam scores of validation and of the ablations, the drift windows) asks this module, so the
toy layout (tf 1) and the real one cannot disagree. Plain Python: eval and data tools import it freely.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

VIDEO_FPS = 25.0
AUDIO_RATE = 16000


@dataclass(frozen=True)
class CausalGrid:
    """Block and frame arithmetic of the causal temporal grid.

    Args:
        frames_per_block: latent frames per block (fpb).
        temporal_factor: video frames per latent frame after the first (tf; the VAE's temporal factor).
        fps: video frames per second of audio.
    """

    frames_per_block: int
    temporal_factor: int = 1
    fps: float = VIDEO_FPS

    def __post_init__(self) -> None:
        if self.frames_per_block < 1 or self.temporal_factor < 1:
            raise ValueError(f"CausalGrid(frames_per_block={self.frames_per_block}, temporal_factor="
                             f"{self.temporal_factor}): expected both >= 1")

    # ----- latent frames -----

    def video_frames(self, latent_frames: int) -> int:
        """Video frames that `latent_frames` latent frames decode to: 1 + tf*(t-1) (0 for none)."""
        return 0 if latent_frames <= 0 else 1 + self.temporal_factor * (latent_frames - 1)

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames needed to cover `video_frames` video frames (a partial last latent frame counts)."""
        return 0 if video_frames <= 0 else 1 + math.ceil((video_frames - 1) / self.temporal_factor)

    def latent_span(self, latent: int) -> tuple[int, int]:
        """(first video frame, count) of one latent frame."""
        return (0, 1) if latent == 0 else (1 + self.temporal_factor * (latent - 1), self.temporal_factor)

    # ----- blocks -----

    def block_span(self, block: int) -> tuple[int, int]:
        """(first video frame, video frame count) of a block."""
        first = 1 + self.temporal_factor * (self.frames_per_block - 1)
        if block == 0:
            return 0, first
        step = self.temporal_factor * self.frames_per_block
        return first + (block - 1) * step, step

    def blocks_for(self, video_frames: int) -> int:
        """Blocks a stream generates to cover `video_frames` video frames."""
        return math.ceil(self.latent_frames(video_frames) / self.frames_per_block)

    def block_of(self, video_frame: int) -> int:
        """The block a video frame belongs to."""
        first = 1 + self.temporal_factor * (self.frames_per_block - 1)
        return 0 if video_frame < first else 1 + (video_frame - first) // (self.temporal_factor * self.frames_per_block)

    def seams(self, video_frames: int) -> list[int]:
        """First video frame of every block after the first, within a video of `video_frames` frames: the
        difference frame[t] - frame[t-1] crosses a seam exactly when t is in this list."""
        out, block = [], 1
        while (start := self.block_span(block)[0]) < video_frames:
            out.append(start)
            block += 1
        return out

    # ----- time -----

    def frames_for_seconds(self, seconds: float) -> int:
        """Video frames in `seconds` of audio (rounded to the nearest frame)."""
        return int(round(seconds * self.fps))

    def frames_for_samples(self, samples: int, rate: int = AUDIO_RATE) -> int:
        """Video frames of a video that lasts as long as `samples` audio samples at `rate` Hz: a partial last
        frame counts (640 samples per frame at 16 kHz and 25 fps)."""
        return math.ceil(samples * self.fps / rate - 1e-9)

    def seconds(self, video_frames: int) -> float:
        return video_frames / self.fps

    def horizon_seconds(self, latent_positions: int) -> float:
        """Seconds of video that `latent_positions` RoPE time positions cover (URCR's trained horizon)."""
        return self.seconds(self.video_frames(latent_positions))

    # ----- URCR positions -----

    def block_positions(self, block: int, max_frames: int | None = None,
                        keep_frames: int = 0) -> tuple[list[int], bool]:
        """(RoPE time positions of the block's latent frames, whether the cache is reset before it).

        Without URCR (max_frames None) positions grow: block i sits at i*fpb. With URCR, a block that would
        pass `max_frames` resets the cache; the `keep_frames` re-encoded frames take positions 0.. and the block
        follows them, so each cycle after the first holds (max_frames - keep_frames) // fpb blocks.
        """
        fpb = self.frames_per_block
        if max_frames is None or block < max_frames // fpb:
            return list(range(block * fpb, (block + 1) * fpb)), False
        first_cycle, per_cycle = max_frames // fpb, (max_frames - keep_frames) // fpb
        if per_cycle < 1:
            raise ValueError(f"URCR keep_frames {keep_frames} + frames_per_block {fpb} > max_frames {max_frames}")
        k = (block - first_cycle) % per_cycle
        start = keep_frames + k * fpb
        return list(range(start, start + fpb)), k == 0

    def reset_blocks(self, num_blocks: int, max_frames: int, keep_frames: int = 0) -> list[int]:
        """Indices of the blocks before which URCR resets the cache, among the first `num_blocks`."""
        return [i for i in range(num_blocks) if self.block_positions(i, max_frames, keep_frames)[1]]
