"""Media I/O round trips through real encoders (H.264/AAC/PCM), on tiny inputs."""
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lit_avatar.data.media import encode_video, probe, read_audio, read_video, resample_indices, write_video
from lit_avatar.errors import UserError


def _frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Flat colour fields that change per frame: exactly what H.264 at crf 18 keeps."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[..., 0] = (np.arange(count) * 9 % 250)[:, None, None]
    frames[..., 1] = 128
    frames[:, 8:24, 8:24, 2] = 200
    return frames


def _write_wav(path, samples: np.ndarray, rate: int) -> None:
    """A PCM wav written with PyAV: samples int16 [channels, S]."""
    import av

    layout = "stereo" if samples.shape[0] == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1) if layout == "mono" else
                                           samples.T.reshape(1, -1).copy(), format="s16", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_round_trip_frames_audio_and_probe(tmp_path):
    frames = _frames(25)
    audio = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=25, audio=audio)
    video, fps = read_video(path)
    assert video.shape == frames.shape and video.dtype == np.uint8 and fps == 25.0
    assert np.abs(video.astype(int) - frames).mean() < 4.0
    decoded = read_audio(path)
    assert decoded.dtype == np.float32 and abs(len(decoded) - len(audio)) <= 1024  # one AAC frame
    # aligned in time (no AAC priming offset survives decoding); the encoder's first ~0.1 s ramps up
    assert np.abs(decoded[2000:15000] - audio[2000:15000]).max() < 0.02
    info = probe(path)
    assert info["has_audio"] and info["width"] == 48 and info["height"] == 32
    assert info["num_frames"] == 25 and info["fps"] == 25.0 and abs(info["duration"] - 1.0) < 0.07
    assert list(tmp_path.iterdir()) == [path]  # the temp file is gone


def test_encode_video_bytes_decode_in_memory():
    data = encode_video(_frames(10), fps=25)
    video, fps = read_video(data)
    assert video.shape == (10, 32, 48, 3) and fps == 25.0
    assert not probe(data)["has_audio"]


def test_resample_30_to_25_fps(tmp_path):
    frames = _frames(30)
    path = tmp_path / "thirty.mp4"
    write_video(path, frames, fps=30)
    video, fps = read_video(path, fps=25)
    assert video.shape[0] == 25 and fps == 25.0
    # output frame k shows source frame nearest k/25 s
    expected = frames[np.round(np.arange(25) * 30 / 25).astype(int)]
    assert np.abs(video[..., 0].astype(int) - expected[..., 0]).mean() < 4.0


def test_resample_indices_nearest():
    times = np.arange(10) / 10.0
    assert resample_indices(times, 5.0, 1.0).tolist() == [0, 2, 4, 6, 8]
    assert resample_indices(times, 20.0, 1.0).tolist()[:4] == [0, 0, 1, 1]


def test_stereo_44k_to_16k_mono(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    left = 0.6 * np.sin(2 * np.pi * 300 * t)
    stereo = (np.stack([left, left]) * 32767).astype(np.int16)
    path = tmp_path / "stereo.wav"
    _write_wav(path, stereo, rate)
    mono = read_audio(path)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 16000) <= 32
    reference = 0.6 * np.sin(2 * np.pi * 300 * np.arange(len(mono)) / 16000)
    assert np.abs(mono[200:-200] - reference[200:-200]).max() < 0.02


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(UserError, match="nope.mp4"):
        read_video(missing)
    with pytest.raises(UserError, match="nope.mp4"):
        read_audio(missing)


def test_no_audio_stream_names_file(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video(path, _frames(5), fps=25)
    with pytest.raises(UserError, match="silent.mp4.*no audio stream"):
        read_audio(path)


def test_garbage_file_is_user_error(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"not a video" * 10)
    with pytest.raises(UserError, match="junk.mp4"):
        read_video(path)


def test_odd_size_rejected_or_padded(tmp_path):
    odd = _frames(3, 33, 48)
    with pytest.raises(UserError, match="even"):
        write_video(tmp_path / "odd.mp4", odd)
    assert not (tmp_path / "odd.mp4").exists()
    write_video(tmp_path / "odd.mp4", odd, pad_odd=True)
    assert read_video(tmp_path / "odd.mp4")[0].shape == (3, 34, 48, 3)


def test_failed_write_keeps_existing_file(tmp_path):
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"old")
    with pytest.raises(UserError):
        write_video(path, np.zeros((2, 8, 8, 3), np.float32))
    assert path.read_bytes() == b"old"


def test_atomic_helpers_make_folders_keep_the_old_file_on_error_and_mark_their_temps(tmp_path):
    import json
    import os

    from lit_avatar.data.atomic import TEMP_SUFFIX, atomic_path, is_temp, write_json_atomic

    path = tmp_path / "new" / "x.json"
    write_json_atomic(path, {"a": np.float32(0.5), "b": float("nan")}, durable=True)
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None}
    with pytest.raises(RuntimeError), atomic_path(path, suffix=TEMP_SUFFIX) as tmp:
        assert is_temp(os.path.basename(tmp)) and not is_temp("x.json")
        Path(tmp).write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None} and os.listdir(path.parent) == ["x.json"]


@pytest.mark.parametrize("codec", ["flac", "wav"])
def test_encode_audio_lossless_round_trip(codec):
    from lit_avatar.data.media import encode_audio

    audio = (0.8 * np.sin(np.arange(8000) * 0.05)).astype(np.float32)
    decoded = read_audio(encode_audio(audio, 16000, codec))
    assert decoded.shape == audio.shape
    assert np.abs(decoded - audio).max() < 1e-4  # 16-bit quantisation only


def test_video_writer_streams_chunks_like_write_video(tmp_path):
    """Chunked writing gives the same frames and audio as one write_video call; nothing appears on error."""
    from lit_avatar.data.media import VideoWriter, probe, read_audio, read_video, write_video

    rng = np.random.default_rng(0)
    frames = (rng.random((30, 32, 48, 3)) * 255).astype(np.uint8)
    audio = (np.sin(np.linspace(0, 200, 30 * 640)) * 0.3).astype(np.float32)
    whole, chunked = tmp_path / "whole.mp4", tmp_path / "chunked.mp4"
    write_video(whole, frames, fps=25, audio=audio)
    with VideoWriter(chunked, fps=25, audio=audio) as writer:
        for start in range(0, 30, 7):
            writer.write(frames[start:start + 7])
        writer.write(frames[:0])
        assert not chunked.exists()  # only published when the block ends
    assert writer.frames_written == 30
    a, _ = read_video(whole)
    b, _ = read_video(chunked)
    assert a.shape == b.shape == (30, 32, 48, 3)
    # x264 is not always byte-repeatable on tiny frames, so compare decoded pixels with a tolerance
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    assert probe(chunked)["has_audio"]
    assert abs(len(read_audio(chunked)) - len(read_audio(whole))) <= 1024

    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(failed, fps=25, audio=audio) as writer:
            writer.write(frames[:5])
            raise RuntimeError("generation failed")
    assert not failed.exists() and not list(tmp_path.glob(".failed.mp4*"))
    with pytest.raises(UserError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4") as writer:
            pass
    assert not (tmp_path / "empty.mp4").exists()
