"""Turn one raw video into schema samples: cut clips, check them, crop the face, encode.

Why streaming with one clip of look-ahead: a clip's reference frame must come from the same person
at another time, and the nearest other time is the next accepted clip (or, for the last one, the
previous). Holding one finished clip back costs a few MB, whatever the length of the source.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_tools.decode import iter_clips, preflight
from data_tools.faces import Crop, FaceDetector, centre_crop, largest_face, stable_crop
from data_tools.filters import REASONS, Rejected, clip_audio, rms_db
from data_tools.sources import Source


@dataclass(frozen=True)
class ClipOptions:
    """What every clip is cut and checked with (the build options a worker needs).

    Args:
        fps: output frame rate.
        size: output side in pixels (square crops).
        clip_seconds: clip length.
        dataset: the `source` field of every sample (a data set name).
        no_face: use centre crops and skip face detection.
        face_detector: ONNX file (see data_tools.faces).
        face_threshold: detector score threshold.
        face_margin: crop margin per side as a fraction of the face size.
        min_face_px: smallest accepted face side in source pixels.
        detect_frames: frames per clip the detector looks at.
        silence_db: clips with audio RMS below this (dBFS) are rejected.
        crf: x264 quality of the stored clips.
    """

    fps: float = 25.0
    size: int = 512
    clip_seconds: float = 5.0
    dataset: str = "real"
    no_face: bool = False
    face_detector: str | None = None
    face_threshold: float = 0.5
    face_margin: float = 0.4
    min_face_px: int = 64
    detect_frames: int = 5
    silence_db: float = -50.0
    crf: int = 18

    @property
    def frames_per_clip(self) -> int:
        return int(round(self.clip_seconds * self.fps))


@dataclass
class SourceReport:
    """What happened to one source: clips kept and every rejection with its reason.

    Args:
        file: the source path.
        identity: its person.
        split: train or val.
    """

    file: str
    identity: str
    split: str
    clips: int = 0
    seconds: float = 0.0
    reason: str | None = None
    detail: str = ""
    rejected_clips: list[dict[str, Any]] = field(default_factory=list)

    def finish(self) -> None:
        """A source with no clip kept is a rejected file: its reason is its clips' commonest reason."""
        if self.clips == 0 and self.reason is None:
            counts = Counter(r["reason"] for r in self.rejected_clips)
            if counts:
                order = list(REASONS)
                self.reason = max(counts, key=lambda r: (counts[r], -order.index(r)))
                self.detail = f"all {len(self.rejected_clips)} clips rejected"
            else:
                self.reason, self.detail = "too_short", "no complete clip"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "identity": self.identity, "split": self.split, "clips": self.clips,
                "seconds": round(self.seconds, 3), "status": "used" if self.clips else "rejected",
                "reason": self.reason, "detail": self.detail, "rejected_clips": self.rejected_clips}


def _detect(frames: list, detector: FaceDetector, count: int) -> list[np.ndarray | None]:
    """The largest face on `count` evenly spaced frames, in source pixels."""
    picks = np.unique(np.linspace(0, len(frames) - 1, max(1, count)).round().astype(int))
    found = []
    for index in picks:
        frame = frames[index]
        scale = min(1.0, detector.input_hw[0] / frame.height, detector.input_hw[1] / frame.width)
        w, h = max(2, int(round(frame.width * scale))), max(2, int(round(frame.height * scale)))
        image = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        box = largest_face(detector.detect(image))
        found.append(None if box is None else box * np.array([frame.width / w, frame.height / h] * 2))
    return found


def choose_crop(frames: list, options: ClipOptions, detector: FaceDetector | None) -> Crop:
    """The clip's crop, or Rejected(no_face | face_too_small).

    Args:
        frames: PyAV frames of the clip.
        options: build options.
        detector: None with --no-face.
    """
    width, height = frames[0].width, frames[0].height
    if detector is None:
        return centre_crop(width, height)
    boxes = _detect(frames, detector, options.detect_frames)
    hits = [b for b in boxes if b is not None]
    if 2 * len(hits) < len(boxes):
        raise Rejected("no_face", f"face on {len(hits)} of {len(boxes)} sampled frames")
    crop = stable_crop(boxes, width, height, options.face_margin)
    face = float(np.median([max(b[2] - b[0], b[3] - b[1]) for b in hits]))
    if face < options.min_face_px:
        raise Rejected("face_too_small", f"face {face:.0f} px < --min-face-px {options.min_face_px}")
    return crop


def cut(frames: list, crop: Crop, size: int) -> np.ndarray:
    """Crop and resize every frame: uint8 [T, size, size, 3].

    Args:
        frames: PyAV frames.
        crop: the clip's square crop.
        size: output side.
    """
    from PIL import Image

    box = (crop.x0, crop.y0, crop.x0 + crop.side, crop.y0 + crop.side)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame.to_ndarray(format="rgb24"))
        out[i] = np.asarray(image.resize((size, size), Image.BICUBIC, box=box))
    return out


@dataclass
class _Clip:
    index: int
    video: np.ndarray
    audio: np.ndarray
    crop: Crop
    ref: np.ndarray | None = None
    ref_time: float | None = None


def _sample(source: Source, clip: _Clip, options: ClipOptions) -> dict[str, Any]:
    from lit_avatar.data import schema
    from lit_avatar.data.media import encode_video

    start = clip.index * options.frames_per_clip / options.fps
    meta = {
        "identity": source.identity, "source": options.dataset, "fps": float(options.fps),
        "num_frames": int(len(clip.video)), "width": options.size, "height": options.size,
        "mouth_box": [round(v, 5) for v in clip.crop.mouth_box()],
        "file": source.name, "clip_index": clip.index, "start": round(start, 4),
        "crop": [clip.crop.x0, clip.crop.y0, clip.crop.side],
    }
    if clip.crop.face is not None:
        meta["face_box"] = [round(v, 2) for v in clip.crop.face]
    if clip.ref_time is not None:
        meta["ref_time"] = round(clip.ref_time, 4)
    mp4 = encode_video(clip.video, fps=options.fps, audio=clip.audio, crf=options.crf)
    return schema.encode_sample(f"{source.name}__c{clip.index:04d}", mp4, meta, audio=clip.audio, ref=clip.ref,
                                caption=source.caption)


def _middle(clip: _Clip, options: ClipOptions) -> tuple[np.ndarray, float]:
    mid = len(clip.video) // 2
    return clip.video[mid], (clip.index * options.frames_per_clip + mid) / options.fps


def process_source(source: Source, report: SourceReport, options: ClipOptions,
                   detector: FaceDetector | None) -> Iterator[dict[str, Any]]:
    """Yield the schema samples of one source in clip order; rejections go into `report`.

    Args:
        source: the raw video.
        report: filled with clips kept and rejections (file-level ones too).
        options: build options.
        detector: face detector, None with --no-face.
    """
    from lit_avatar.data.media import read_audio
    from lit_avatar.errors import UserError

    try:
        info = preflight(source.path)
        if not info.has_audio:
            raise Rejected("no_audio", "no audio stream")
        if info.duration + 0.5 / options.fps < options.clip_seconds:
            raise Rejected("too_short", f"{info.duration:.2f} s < --clip-seconds {options.clip_seconds}")
        try:
            audio = read_audio(source.path, 16000)
        except UserError as err:
            raise Rejected("broken", f"audio: {err}") from None
    except Rejected as rej:
        report.reason, report.detail = rej.reason, rej.detail
        return
    per_clip = int(round(options.frames_per_clip * 16000 / options.fps))
    pending: _Clip | None = None
    previous_ref: tuple[np.ndarray, float] | None = None
    try:
        for index, frames in enumerate(iter_clips(source.path, options.fps, options.frames_per_clip)):
            try:
                piece = clip_audio(audio, index * per_clip, per_clip, tolerance=2 * per_clip // options.frames_per_clip)
                level = rms_db(piece)
                if level < options.silence_db:
                    raise Rejected("silent", f"audio RMS {level:.1f} dBFS < --silence-db {options.silence_db}")
                crop = choose_crop(frames, options, detector)
            except Rejected as rej:
                report.rejected_clips.append({"clip": index, "reason": rej.reason, "detail": rej.detail})
                continue
            clip = _Clip(index, cut(frames, crop, options.size), piece, crop)
            del frames
            if pending is not None:
                pending.ref, pending.ref_time = _middle(clip, options)
                yield _sample(source, pending, options)
                report.clips += 1
                report.seconds += options.frames_per_clip / options.fps
                previous_ref = _middle(pending, options)
            pending = clip
    except Rejected as rej:  # a decode error part-way: earlier clips stand
        report.rejected_clips.append({"clip": None, "reason": rej.reason, "detail": rej.detail})
    if pending is not None:
        if previous_ref is not None:
            pending.ref, pending.ref_time = previous_ref
        else:  # a one-clip source has no other time: take the clip's last frame, as the loader would
            last = len(pending.video) - 1
            pending.ref = pending.video[last]
            pending.ref_time = (pending.index * options.frames_per_clip + last) / options.fps
        yield _sample(source, pending, options)
        report.clips += 1
        report.seconds += options.frames_per_clip / options.fps
