"""THE sample schema: what one talking-head clip looks like inside a webdataset tar shard.

Every writer (`data_tools.synth`, `data_tools.build`) calls `encode_sample` and the loader calls
`decode_sample`, so the two sides cannot drift apart.

A sample is a group of tar members sharing one key (`<key>.<ext>`); keys must not contain dots.

| member (ext)       | required | content                                                                |
|--------------------|----------|------------------------------------------------------------------------|
| `mp4`              | yes      | the clip: H.264 yuv420p video at `meta.fps` (25), AAC audio muxed in    |
| `flac` or `wav`    | no       | the same audio, lossless, 16 kHz mono; preferred over the mp4's AAC     |
| `json`             | yes      | metadata (UTF-8), see below                                             |
| `ref.png`/`ref.jpg`| no       | one RGB frame of the SAME identity at ANOTHER time (not inside the clip) |
| `latents.npy`      | no       | float16 [C, t, h, w]: VAE latents of the whole clip (causal, from frame 0) |
| `ref_latent.npy`   | no       | float16 [C, 1, h, w]: VAE latent of the reference frame                  |
| `audio_feats.npy`  | no       | float16 [T, W, D]: audio features per video frame (AudioEncoder output) |
| `text.npy`         | no       | float16 [L, text_dim]: text embeddings                                  |
| `txt`              | no       | the clip's caption (UTF-8), embedded by the training stage's text encoder |

`json` fields:
- `schema_version` (int, `SCHEMA_VERSION`), `identity` (str: who; references and the train/val split
  follow it), `source` (str: data set name, e.g. "synthtalk"), `fps` (float), `num_frames` (int),
  `sample_rate` (int, 16000), `width`, `height` (int).
- `mouth_box` [x0, y0, x1, y1] normalised to [0, 1] (covers the mouth at its widest opening over the
  whole clip; real data: derived from the face box).
- optional `mouth`: list of `num_frames` floats in [0, 1], the ground-truth opening (SynthTalk).
- optional `latent_temporal_factor` (int) when `latents.npy` is present, `ref_time` (seconds of the
  reference frame in its recording), free extra fields (kept in `meta`).

A clip with `text.npy` trains on those embeddings; else a clip with `txt` trains on its caption's embeddings
(the stage's `text_encoder`); else on the model's learned null text.

Without `ref.*` the loader takes the reference from the same clip, as far in time from the sampled
window as possible; writers should store `ref.*` whenever they can.
"""
from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
FPS = 25.0
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # SAMPLE_RATE / FPS: audio samples per video frame

VIDEO_EXT = "mp4"
AUDIO_EXTS = ("flac", "wav")
META_EXT = "json"
REF_EXTS = ("ref.png", "ref.jpg")
ARRAY_EXTS = {"latents": "latents.npy", "ref_latent": "ref_latent.npy",
              "audio_feats": "audio_feats.npy", "text": "text.npy"}
CAPTION_EXT = "txt"
REQUIRED_META = {"identity": str, "source": str, "fps": (int, float), "num_frames": int,
                 "mouth_box": list}


class SampleError(ValueError):
    """A shard member that cannot be decoded or breaks the schema: the loader skips and counts it. Only data
    errors become SampleError; a TypeError or KeyError from this code is a bug and is raised as it is."""


def _check_key(key: str) -> None:
    if not key or "." in key or key.startswith("/"):
        raise SampleError(f"sample key {key!r}: expected a non-empty key without dots")


def encode_image(image: np.ndarray, ext: str = "png") -> bytes:
    """PNG (lossless) or JPEG bytes of an RGB uint8 [H, W, 3] image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(
        buffer, format="PNG" if ext.endswith("png") else "JPEG", quality=95)
    return buffer.getvalue()


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """RGB uint8 [H, W, 3] from PNG/JPEG bytes; SampleError naming `name` when they are not a readable image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    # what Pillow raises for bytes that are not a (sane) image; SyntaxError: "broken PNG file"
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as err:
        raise SampleError(f"{name}: not a readable PNG/JPEG image ({type(err).__name__}: {err})") from None


def encode_array(array: np.ndarray) -> bytes:
    """`.npy` bytes, float16 for floating arrays (halves shard size; precision is ample for latents)."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float16)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes, name: str = "array") -> np.ndarray:
    """The array of `.npy` bytes (never a pickle); SampleError naming `name` when they are not one."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SampleError(f"{name}: not a .npy array ({type(err).__name__}: {err})") from None


def validate_meta(meta: Mapping[str, Any], key: str) -> None:
    """Raise SampleError naming the key and field when `meta` breaks the schema."""
    for field, kind in REQUIRED_META.items():
        if field not in meta:
            raise SampleError(f"sample {key}: json lacks required field {field!r}")
        if not isinstance(meta[field], kind) or isinstance(meta[field], bool):
            raise SampleError(f"sample {key}: json field {field!r} has type {type(meta[field]).__name__}")
    box = meta["mouth_box"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    if len(box) != 4 or not numbers or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise SampleError(f"sample {key}: mouth_box {box} is not [x0,y0,x1,y1] with 0<=x0<x1<=1, 0<=y0<y1<=1")
    if "mouth" in meta and not isinstance(meta["mouth"], list):
        raise SampleError(f"sample {key}: json field 'mouth' has type {type(meta['mouth']).__name__}")
    if "mouth" in meta and len(meta["mouth"]) != meta["num_frames"]:
        raise SampleError(f"sample {key}: json 'mouth' has {len(meta['mouth'])} values, "
                          f"expected num_frames={meta['num_frames']}")


def encode_caption(caption: str, key: str) -> bytes:
    """The `txt` member of a caption: UTF-8 bytes of a str."""
    if not isinstance(caption, str):
        raise SampleError(f"sample {key}: caption has type {type(caption).__name__}, expected str")
    return caption.encode("utf-8")


def decode_caption(data: bytes, key: str) -> str:
    """The caption of a `txt` member; SampleError naming the key when it is not UTF-8."""
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise SampleError(f"sample {key}: .{CAPTION_EXT} is not UTF-8 text ({err})") from None


def encode_sample(key: str, mp4: bytes, meta: Mapping[str, Any], audio: np.ndarray | None = None,
                  ref: np.ndarray | None = None, ref_ext: str = "ref.png",
                  arrays: Mapping[str, np.ndarray] | None = None, caption: str | None = None) -> dict[str, Any]:
    """One sample as a shard writer takes it (`data_tools.shards.ShardFile`, `webdataset.TarWriter`).

    Args:
        key: unique sample key, no dots (e.g. "id0003_c0012").
        mp4: the encoded clip (`lit_avatar.data.media.encode_video`), audio muxed in.
        meta: the json fields (module docstring); `schema_version` is added.
        audio: optional mono float waveform at meta `sample_rate`, stored lossless as FLAC.
        ref: optional RGB uint8 [H, W, 3] frame of the same identity at another time.
        ref_ext: "ref.png" (lossless) or "ref.jpg".
        arrays: optional precomputed arrays by name: latents, ref_latent, audio_feats, text.
        caption: optional text describing the clip, stored as the `txt` member; None stores none.
    """
    from lit_avatar.data.media import encode_audio

    _check_key(key)
    meta = {"schema_version": SCHEMA_VERSION, "sample_rate": SAMPLE_RATE, **meta}
    validate_meta(meta, key)
    sample: dict[str, Any] = {"__key__": key, VIDEO_EXT: mp4,
                              META_EXT: json.dumps(meta, sort_keys=True).encode("utf-8")}
    if audio is not None:
        sample["flac"] = encode_audio(audio, int(meta["sample_rate"]), codec="flac")
    if ref is not None:
        if ref_ext not in REF_EXTS:
            raise SampleError(f"sample {key}: ref_ext {ref_ext!r} is not one of {REF_EXTS}")
        sample[ref_ext] = encode_image(ref, ref_ext)
    for name, array in (arrays or {}).items():
        if name not in ARRAY_EXTS:
            raise SampleError(f"sample {key}: unknown array {name!r}; expected one of {sorted(ARRAY_EXTS)}")
        sample[ARRAY_EXTS[name]] = encode_array(array)
    if caption is not None:
        sample[CAPTION_EXT] = encode_caption(caption, key)
    return sample


def read_meta(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The validated json of a raw sample (cheap: lets the loader pick a clip before decoding video).

    Raises:
        SampleError: missing, unparsable or off-schema json (names the key).
    """
    key = str(raw.get("__key__", "<no key>"))
    if META_EXT not in raw:
        raise SampleError(f"sample {key}: missing member .{META_EXT}")
    try:
        meta = json.loads(bytes(raw[META_EXT]).decode("utf-8"))
    except ValueError as err:
        raise SampleError(f"sample {key}: cannot decode .{META_EXT} ({err})") from None
    if not isinstance(meta, dict):
        raise SampleError(f"sample {key}: .json is not an object")
    validate_meta(meta, key)
    return meta


def has_ref(raw: Mapping[str, Any]) -> bool:
    return any(ext in raw for ext in REF_EXTS)


def decode_sample(raw: Mapping[str, Any], decode_video: bool = True, sample_rate: int = SAMPLE_RATE,
                  video_window: tuple[int, int] | None = None) -> dict[str, Any]:
    """Decode a raw sample (member bytes by extension) into arrays.

    Args:
        raw: `{"__key__": str, "mp4": bytes, "json": bytes, ...}` as webdataset groups tar members.
        decode_video: False skips the mp4 (when precomputed latents stand in for it).
        sample_rate: audio output rate.
        video_window: (start, count) decodes only those frames; `video_start` in the result says where
            the returned frames begin.

    Returns:
        dict with key, meta (dict), video (uint8 [T,H,W,3] or None), video_start (int), audio (float32 [S]
        or None), ref (uint8 [H,W,3] or None), any of latents, ref_latent, audio_feats, text (np arrays), and
        `txt` (the caption, str) when the sample has one.

    Raises:
        SampleError: a member is missing, corrupt or breaks the schema (names the key and member).
    """
    from lit_avatar.data.media import read_audio, read_video
    from lit_avatar.errors import UserError

    key = str(raw.get("__key__", "<no key>"))
    out: dict[str, Any] = {"key": key, "video": None, "video_start": 0, "audio": None, "ref": None,
                           "meta": read_meta(raw)}
    if CAPTION_EXT in raw:
        out[CAPTION_EXT] = decode_caption(raw[CAPTION_EXT], key)
    member = META_EXT
    try:
        if decode_video:
            member = VIDEO_EXT
            if VIDEO_EXT not in raw:
                raise SampleError(f"sample {key}: missing member .{VIDEO_EXT}")
            out["video"], _ = read_video(bytes(raw[VIDEO_EXT]), name=f"{key}.{VIDEO_EXT}", window=video_window)
            out["video_start"] = video_window[0] if video_window else 0
        audio_member = next((ext for ext in AUDIO_EXTS if ext in raw), None)
        if audio_member is None and VIDEO_EXT in raw:
            audio_member = VIDEO_EXT
        if audio_member is not None:
            member = audio_member
            out["audio"] = read_audio(bytes(raw[audio_member]), sample_rate, name=f"{key}.{audio_member}")
        ref_member = next((ext for ext in REF_EXTS if ext in raw), None)
        if ref_member is not None:
            member = ref_member
            out["ref"] = decode_image(bytes(raw[ref_member]), name=f"sample {key}: .{ref_member}")
        for name, ext in ARRAY_EXTS.items():
            if ext in raw:
                member = ext
                out[name] = decode_array(bytes(raw[ext]), name=f"sample {key}: .{ext}")
    except SampleError:
        raise
    # what decoders raise for bad bytes; a TypeError or KeyError here is a bug in this code: raised as it is
    except (UserError, ValueError, OSError, EOFError) as err:
        raise SampleError(f"sample {key}: cannot decode .{member} ({err})") from None
    return out
