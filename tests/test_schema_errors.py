"""The sample decoder skips data errors (SampleError, counted by the loader) and raises programming errors."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lit_avatar.data import schema
from lit_avatar.data.schema import SampleError, decode_sample

META = {"identity": "a", "source": "s", "fps": 25, "num_frames": 4, "mouth_box": [0.2, 0.5, 0.8, 0.9]}


def _raw(**members) -> dict:
    return {"__key__": "clip7", "json": json.dumps(META).encode(), **members}


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_bad_bytes_are_sample_errors_naming_key_and_member():
    ok = decode_sample(_raw(**{"latents.npy": _npy(np.ones((2, 3), np.float16))}), decode_video=False)
    assert ok["latents"].shape == (2, 3)
    cases = {
        "latents.npy": (b"\x93NUMPY garbage", "sample clip7: .latents.npy: not a .npy array"),
        "text.npy": (b"", "sample clip7: .text.npy: not a .npy array"),
        "ref.png": (b"\x89PNG\r\n\x1a\n broken", "sample clip7: .ref.png: not a readable PNG/JPEG image"),
        "flac": (b"fLaC not audio", "sample clip7: cannot decode .flac"),
    }
    for member, (data, message) in cases.items():
        with pytest.raises(SampleError, match=message):
            decode_sample(_raw(**{member: data}), decode_video=False)


@pytest.mark.parametrize("meta", [{"mouth_box": [0, "a", 1, 1]}, {"mouth": 3}])
def test_off_schema_json_values_are_sample_errors(meta):
    raw = {"__key__": "clip7", "json": json.dumps({**META, **meta}).encode()}
    with pytest.raises(SampleError, match="sample clip7: "):
        decode_sample(raw, decode_video=False)


@pytest.mark.parametrize("error", [TypeError("unexpected keyword 'rate'"), KeyError("sample_rate")])
def test_programming_errors_are_raised_not_skipped(monkeypatch, error):
    """A bug in the decoding code (a TypeError or KeyError) must stop the run, not turn every sample into a
    skipped one with a warning."""
    import lit_avatar.data.media as media

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(media, "read_audio", broken)
    with pytest.raises(type(error)) as caught:
        decode_sample(_raw(flac=b"fLaC"), decode_video=False)
    assert caught.type is type(error) and not isinstance(caught.value, SampleError)
    monkeypatch.setattr(schema.np, "load", broken)
    with pytest.raises(type(error)):
        decode_sample(_raw(**{"latents.npy": _npy(np.ones(2))}), decode_video=False)
