"""Video and audio files through PyAV: the one place the project reads and writes media.

Why one module: every part (data building, the loader, inference, evaluation) must agree on
colour space (RGB uint8), audio format (16 kHz mono float32) and frame-rate handling, and every
output must be written atomically so a crash never leaves a half-written mp4 behind.

Sources may be a path or the raw bytes of a file (the webdataset loader decodes tar members in
memory); errors name the path, or `name` when bytes are given.
"""
from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from lit_avatar.data.atomic import atomic_path
from lit_avatar.errors import UserError, existing_file

MediaSource = str | os.PathLike | bytes | bytearray | memoryview


def _label(source: MediaSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<in-memory media>"
    return str(source)


def _open(source: MediaSource, name: str | None):
    """Open a container for reading, turning every failure into a UserError naming the input."""
    import av  # lazily: the GPU machine has no PyAV

    label = _label(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    else:
        target = str(existing_file(source, "a video/audio file"))
    try:
        return av.open(target, mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise UserError(f"{label}: cannot open as video/audio ({err})") from None


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def resample_indices(timestamps: np.ndarray, fps: float, duration: float) -> np.ndarray:
    """Indices of the source frames nearest to each output time k / fps, 0 <= k < round(duration*fps).

    Args:
        timestamps: presentation time of each decoded source frame, seconds, ascending.
        fps: the output rate.
        duration: the span the output covers, seconds (source frame count / source fps).
    """
    count = max(1, int(round(duration * fps)))
    wanted = np.arange(count) / fps + timestamps[0]
    pos = np.searchsorted(timestamps, wanted)
    pos = np.clip(pos, 1, len(timestamps) - 1) if len(timestamps) > 1 else np.zeros_like(pos)
    if len(timestamps) > 1:
        left_closer = (wanted - timestamps[pos - 1]) <= (timestamps[pos] - wanted)
        pos = np.where(left_closer, pos - 1, pos)
    return pos


def read_video(source: MediaSource, fps: float | None = None, name: str | None = None,
               window: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """Decode frames as RGB uint8 [T, H, W, 3].

    Args:
        source: a path, or the bytes of a media file.
        fps: resample to this rate by picking the frame nearest each output timestamp (None keeps the
            file's rate).
        name: what errors call the input when `source` is bytes.
        window: (start, count): convert only frames start..start+count-1 and stop decoding after them
            (the loader's clips: RGB conversion dominates decoding cost). Not combinable with `fps`.

    Returns:
        (frames, fps_out) where fps_out is `fps` if given, else the stream's average rate.
    """
    import av

    label = _label(source, name)
    if window is not None and fps is not None:
        raise UserError(f"read_video {label}: pass either fps or window, not both")
    first, stop = (0, None) if window is None else (window[0], window[0] + window[1])
    with _open(source, name) as container:
        if not container.streams.video:
            raise UserError(f"{label}: has no video stream (expected a video file)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native_fps = _frame_rate(stream)
        frames, times = [], []
        try:
            for index, frame in enumerate(container.decode(stream)):
                if stop is not None and index >= stop:
                    break
                if index < first:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time if frame.time is not None else len(times) / max(native_fps, 1e-9))
        except av.FFmpegError as err:
            if not frames:
                raise UserError(f"{label}: cannot decode video ({err})") from None
            # a truncated tail: keep what decoded cleanly
    if not frames:
        raise UserError(f"{label}: video stream has no frames")
    video = np.stack(frames)
    if fps is None or native_fps <= 0 or abs(fps - native_fps) < 1e-6:
        return video, float(fps if fps is not None else native_fps)
    if fps <= 0:
        raise UserError(f"read_video fps={fps}: expected a positive frame rate")
    timestamps = np.asarray(times, dtype=np.float64)
    order = np.argsort(timestamps, kind="stable")
    video, timestamps = video[order], timestamps[order]
    index = resample_indices(timestamps, fps, len(video) / native_fps)
    return video[index], float(fps)


def read_audio(source: MediaSource, sample_rate: int = 16000, name: str | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 at `sample_rate`, values in [-1, 1].

    Args:
        source: a path, or the bytes of a media file (any container, codec, rate, channel layout).
        sample_rate: output rate in Hz.
        name: what errors call the input when `source` is bytes.
    """
    import av

    label = _label(source, name)
    with _open(source, name) as container:
        if not container.streams.audio:
            raise UserError(f"{label}: has no audio stream (expected a file with audio)")
        stream = container.streams.audio[0]
        # Keep the channels through resampling and average them here: FFmpeg's own mono downmix
        # scales stereo by 1/sqrt(2) per channel, which can push a full-scale file past [-1, 1].
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout or None, rate=sample_rate)
        chunks = []

        def take(frames) -> None:
            chunks.extend(out.to_ndarray().mean(axis=0) for out in frames)

        try:
            for frame in container.decode(stream):
                frame.pts = None  # the resampler re-times; stale pts from edited mp4s only warn
                take(resampler.resample(frame))
        except av.FFmpegError as err:
            if not chunks:
                raise UserError(f"{label}: cannot decode audio ({err})") from None
        take(resampler.resample(None))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.clip(np.concatenate(chunks).astype(np.float32, copy=False), -1.0, 1.0)


def _check_frames(frames: np.ndarray, pad_odd: bool) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise UserError(f"write_video frames: expected uint8 [T,H,W,3] with T >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise UserError(f"write_video frames: expected dtype uint8, got {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        if not pad_odd:
            raise UserError(
                f"write_video frames: {height}x{width} (HxW); H.264 yuv420p needs even height and width "
                "(crop, or pass pad_odd=True to repeat the last row/column)")
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


class _Muxer:
    """H.264 (+ AAC) into an open container; video frames are encoded as they come, audio at the end."""

    def __init__(self, target, container_format: str | None, fps: float, audio: np.ndarray | None,
                 sample_rate: int, crf: int) -> None:
        import av

        self.container = av.open(target, mode="w", format=container_format)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.audio, self.sample_rate, self.crf = audio, sample_rate, crf
        self.video_stream = self.audio_stream = None
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        import av

        if self.video_stream is None:  # every stream exists before the first packet (the header is written then)
            self.video_stream = self.container.add_stream("libx264", rate=self.rate)
            self.video_stream.width, self.video_stream.height = frames.shape[2], frames.shape[1]
            self.video_stream.pix_fmt = "yuv420p"
            self.video_stream.options = {"crf": str(self.crf), "preset": "medium"}
            if self.audio is not None:
                self.audio_stream = self.container.add_stream("aac", rate=self.sample_rate, layout="mono")
        elif frames.shape[1:3] != (self.video_stream.height, self.video_stream.width):
            raise UserError(f"write_video frames: {frames.shape[1]}x{frames.shape[2]} after "
                            f"{self.video_stream.height}x{self.video_stream.width} frames; expected one size")
        for image in frames:
            self.container.mux(self.video_stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        self.frames += len(frames)

    def finish(self) -> None:
        import av

        self.container.mux(self.video_stream.encode(None))
        if self.audio_stream is not None:
            samples = np.clip(np.asarray(self.audio, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
            chunk = 1024 * 16
            for start in range(0, samples.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                                   format="fltp", layout="mono")
                piece.sample_rate = self.sample_rate
                piece.pts = start
                piece.time_base = Fraction(1, self.sample_rate)
                self.container.mux(self.audio_stream.encode(piece))
            self.container.mux(self.audio_stream.encode(None))
        self.container.close()


def _mux(target, container_format: str | None, frames: np.ndarray, fps: float, audio: np.ndarray | None,
         sample_rate: int, crf: int) -> None:
    muxer = _Muxer(target, container_format, fps, audio, sample_rate, crf)
    try:
        muxer.add(frames)
        muxer.finish()
    finally:
        muxer.container.close()


class VideoWriter:
    """`write_video` for streams: frames are encoded as they arrive, so memory stays bounded for any length.

    The audio track (known up front, e.g. the driving audio of `lit-avatar generate`) is muxed at close.
    Atomic like write_video: the file appears under its name only when the `with` block ends without error.

        with VideoWriter("out.mp4", fps=25, audio=wave) as writer:
            for frames in stream:
                writer.write(frames)

    Args: as `write_video`, without `frames`.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25, audio: np.ndarray | None = None,
                 sample_rate: int = 16000, crf: int = 18, pad_odd: bool = False) -> None:
        _validate_write_args(fps, audio, sample_rate)
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise UserError(f"{self.path}: output folder {self.path.parent} does not exist")
        self.fps, self.audio, self.sample_rate, self.crf, self.pad_odd = fps, audio, sample_rate, crf, pad_odd
        self._stack = self._muxer = None

    @property
    def frames_written(self) -> int:
        return self._muxer.frames if self._muxer is not None else 0

    def __enter__(self) -> VideoWriter:
        from contextlib import ExitStack

        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path, suffix=self.path.suffix or ".mp4"))
        self._muxer = _Muxer(tmp, None if self.path.suffix else "mp4", self.fps, self.audio, self.sample_rate, self.crf)
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 RGB frames [n, H, W, 3] (n may be 0)."""
        if len(frames):
            self._muxer.add(_check_frames(frames, self.pad_odd))

    def __exit__(self, exc_type, exc, tb) -> bool:
        error = (exc_type, exc, tb)
        try:
            if exc_type is None:
                if not self._muxer.frames:
                    raise UserError(f"{self.path}: no frames were written")
                self._muxer.finish()
        except BaseException as err:
            error = (type(err), err, err.__traceback__)
            raise
        finally:
            self._muxer.container.close()
            # atomic_path publishes the temp file only when no exception is passed on to it
            self._stack.__exit__(*error)
        return False


def _validate_write_args(fps: float, audio: np.ndarray | None, sample_rate: int) -> None:
    if not fps or fps <= 0:
        raise UserError(f"write_video fps={fps}: expected a positive frame rate")
    if audio is not None and np.asarray(audio).ndim != 1:
        raise UserError(f"write_video audio: expected mono float [S], got shape {np.asarray(audio).shape}")
    if sample_rate <= 0:
        raise UserError(f"write_video sample_rate={sample_rate}: expected a positive rate in Hz")


def encode_video(frames: np.ndarray, fps: float = 25, audio: np.ndarray | None = None, sample_rate: int = 16000,
                 crf: int = 18, pad_odd: bool = False) -> bytes:
    """The bytes of an mp4 (H.264 yuv420p + AAC): what shard writers store without touching the disk.

    Args: as `write_video`.
    """
    _validate_write_args(fps, audio, sample_rate)
    frames = _check_frames(frames, pad_odd)
    buffer = io.BytesIO()
    _mux(buffer, "mp4", frames, fps, audio, sample_rate, crf)
    return buffer.getvalue()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25, audio: np.ndarray | None = None,
                sample_rate: int = 16000, crf: int = 18, pad_odd: bool = False) -> None:
    """Write H.264 (yuv420p) video with optional AAC audio, atomically (lit_avatar.data.atomic).

    Args:
        path: output file; its suffix picks the container (.mp4, .mkv, .mov).
        frames: uint8 RGB [T, H, W, 3]; H and W must be even for yuv420p unless `pad_odd`.
        fps: frame rate.
        audio: optional mono float waveform in [-1, 1] (values outside are clipped).
        sample_rate: rate of `audio` in Hz.
        crf: x264 quality (lower is closer to lossless; 18 is visually lossless).
        pad_odd: pad odd sizes by repeating the last row/column instead of raising.
    """
    _validate_write_args(fps, audio, sample_rate)
    frames = _check_frames(frames, pad_odd)
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: output folder {path.parent} does not exist")
    with atomic_path(path, suffix=path.suffix or ".mp4") as tmp:
        _mux(tmp, None if path.suffix else "mp4", frames, fps, audio, sample_rate, crf)


def encode_audio(audio: np.ndarray, sample_rate: int = 16000, codec: str = "flac") -> bytes:
    """The bytes of a mono audio file: "flac" (lossless, small) or "wav" (16-bit PCM).

    Args:
        audio: mono float waveform [S] in [-1, 1] (clipped).
        sample_rate: rate in Hz.
        codec: "flac" or "wav".
    """
    import av

    if codec not in ("flac", "wav"):
        raise UserError(f"encode_audio codec={codec!r}: expected 'flac' or 'wav'")
    samples = np.asarray(audio, dtype=np.float64).reshape(-1)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, -1)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=codec) as container:
        stream = container.add_stream("flac" if codec == "flac" else "pcm_s16le", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def probe(source: MediaSource, name: str | None = None) -> dict:
    """Container facts without decoding: duration (s), fps, has_audio, width, height, num_frames.

    Args:
        source: a path, or the bytes of a media file.
        name: what errors call the input when `source` is bytes.
    """
    with _open(source, name) as container:
        info = {"duration": float(container.duration) / 1e6 if container.duration else 0.0, "fps": 0.0,
                "has_audio": bool(container.streams.audio), "width": 0, "height": 0, "num_frames": 0}
        if container.streams.video:
            stream = container.streams.video[0]
            info.update(fps=_frame_rate(stream), width=stream.codec_context.width,
                        height=stream.codec_context.height, num_frames=int(stream.frames or 0))
            if not info["duration"] and stream.duration and stream.time_base:
                info["duration"] = float(stream.duration * stream.time_base)
    return info
