"""Stream a raw video clip by clip at the target frame rate, after checking the file is whole.

Why not `media.read_video`: it holds every frame of a file in memory, fine for 5-second samples but
not for hour-long sources at 1080p. Here frames stay as decoded (YUV) PyAV frames for one clip at a
time and become RGB only once cropped. The resampling rule is the same as `media.read_video`: each
output time k / fps takes the source frame nearest to it (ties to the earlier one), for
round(source frames / source fps * fps) output frames.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from data_tools.filters import Rejected


@dataclass(frozen=True)
class SourceInfo:
    """What the pre-flight learnt about a file.

    Args:
        width: frame width.
        height: frame height.
        fps: native frame rate.
        duration: seconds of video actually present in the file.
        has_audio: whether an audio stream exists.
    """

    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool


def _open(path: str):
    import av

    try:
        return av.open(path, mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise Rejected("broken", f"cannot open ({err.__class__.__name__}: {str(err).split(':')[0]})") from None


def preflight(path: str) -> SourceInfo:
    """Demux every packet (no decoding: fast) to reject broken and truncated files up front.

    Why up front: a truncated download still opens and its header still claims the full length;
    finding out at the end of decoding would leave half its clips already in a shard.

    Args:
        path: the video file.
    """
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise Rejected("broken", "no video stream")
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or video.base_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0 or not video.codec_context.width:
            raise Rejected("broken", "video stream has no frame rate or size")
        claimed = [float(container.duration) / 1e6 if container.duration else 0.0]
        if video.duration and video.time_base:
            claimed.append(float(video.duration * video.time_base))
        if video.frames:
            claimed.append(video.frames / fps)
        ends = {"video": 0.0, "any": 0.0}
        try:
            for packet in container.demux():
                if packet.pts is None or packet.time_base is None:
                    continue
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                ends["any"] = max(ends["any"], end)
                if packet.stream.type == "video":
                    ends["video"] = max(ends["video"], end)
        except av.FFmpegError as err:
            detail = f"demuxing stopped at {ends['video']:.2f} s ({err.__class__.__name__})"
            raise Rejected("truncated", detail) from None
        start = float(video.start_time * video.time_base) if video.start_time and video.time_base else 0.0
        present = ends["video"] - start
        expected = max(claimed)
        tolerance = max(0.25, 0.02 * expected)
        if expected and max(ends["any"] - start, present) < expected - tolerance:
            raise Rejected("truncated", f"stream ends at {present:.2f} s but the file claims {expected:.2f} s")
        return SourceInfo(width=video.codec_context.width, height=video.codec_context.height, fps=fps,
                          duration=present, has_audio=bool(container.streams.audio))


def iter_clips(path: str, fps: float, frames_per_clip: int) -> Iterator[list]:
    """Yield lists of `frames_per_clip` PyAV video frames, resampled to `fps`; a shorter tail is dropped.

    Args:
        path: the video file (already through `preflight`).
        fps: output frame rate.
        frames_per_clip: frames per yielded clip.
    """
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        native = float(rate)
        clip: list = []
        emitted = 0  # output frames produced so far
        seen = 0  # source frames decoded
        first_time = None
        previous = None
        previous_time = 0.0

        def emit(frame) -> list | None:
            nonlocal clip, emitted
            clip.append(frame)
            emitted += 1
            if len(clip) == frames_per_clip:
                done, clip = clip, []
                return done
            return None

        try:
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else seen / native
                if first_time is None:
                    first_time = time
                if previous is not None:
                    # output times that lie nearer the previous frame (ties included) take it
                    while first_time + emitted / fps - previous_time <= time - (first_time + emitted / fps):
                        full = emit(previous)
                        if full:
                            yield full
                previous, previous_time = frame, time
                seen += 1
        except av.FFmpegError as err:
            raise Rejected("broken", f"decode error after {seen / native:.2f} s ({err.__class__.__name__})") from None
        total = max(1, int(round(seen / native * fps))) if seen else 0
        while previous is not None and emitted < total:
            full = emit(previous)
            if full:
                yield full
