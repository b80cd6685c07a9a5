"""SynthSync: the opening measure follows a drawn mouth, and a planted audio lag is recovered."""
import numpy as np
import pytest

from eval.synthsync import audio_envelope, batch_synthsync, mouth_opening, synthsync
from lit_avatar.errors import UserError

BOX = (0.25, 0.5, 0.75, 0.9)


def _draw(openings: np.ndarray, size: int = 48, skin=(200, 160, 140)) -> np.ndarray:
    """Frames with a dark ellipse whose height is the opening (0..1) inside BOX."""
    t = len(openings)
    frames = np.empty((t, size, size, 3), dtype=np.uint8)
    frames[:] = np.array(skin, dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cx, cy = 0.5 * size, 0.7 * size
    rx = 0.2 * size
    for i, o in enumerate(openings):
        ry = 0.01 * size + 0.15 * size * o
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        frames[i][inside] = (40, 10, 20)
    return frames


def _signal(t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # syllable-like: random levels held for 2-4 frames
    out, i = np.zeros(t), 0
    while i < t:
        n = int(rng.integers(2, 5))
        out[i: i + n] = rng.uniform(0, 1) if rng.uniform() > 0.25 else 0.0
        i += n
    return out


def _audio_for(levels: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(levels) * 640).astype(np.float32)
    return (noise * np.repeat(levels, 640) * 0.3).astype(np.float32)


def test_mouth_opening_is_monotone_in_drawn_opening():
    levels = np.linspace(0, 1, 8)
    meas = mouth_opening(_draw(levels), BOX)
    assert np.all(np.diff(meas) > 0)
    # float frames in [0,1] give the same answer as uint8
    meas_f = mouth_opening(_draw(levels).astype(np.float32) / 255.0, BOX)
    np.testing.assert_allclose(meas, meas_f, atol=1e-9)


def test_mouth_opening_independent_of_skin_colour():
    levels = np.linspace(0, 1, 6)
    a = mouth_opening(_draw(levels, skin=(230, 200, 180)), BOX)
    b = mouth_opening(_draw(levels, skin=(140, 100, 80)), BOX)
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_flat_box_gives_zeros():
    frames = np.full((4, 16, 16, 3), 128, dtype=np.uint8)
    assert np.all(mouth_opening(frames, BOX) == 0)


def test_audio_envelope_rms_per_frame():
    levels = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    audio = np.repeat(levels, 640) * np.where(np.arange(8 * 640) % 2, 1.0, -1.0)  # square wave: RMS = level
    env = audio_envelope(audio, 10)
    assert env.shape == (10,)
    np.testing.assert_allclose(env[3], 1.0)  # middle of the loud run is untouched by smoothing
    np.testing.assert_allclose(env[1], 0.25)  # [1,2,1]/4 smoothing
    assert env[9] == 0.0  # past the audio's end


@pytest.mark.parametrize("lag", [0, 2, -3])
def test_planted_lag_is_recovered(lag):
    t = 120
    sig = _signal(t + 10)
    mouth = sig[5: 5 + t]  # opening[t] = s[t]
    sound = sig[5 + lag: 5 + lag + t]  # envelope[t] = s[t + lag] -> mouth follows sound by lag
    out = synthsync(_draw(mouth), BOX, _audio_for(sound), max_lag=5)
    assert out["best_lag"] == lag
    assert out["best_r"] > 0.9
    if lag == 0:
        assert out["r"] == pytest.approx(out["best_r"])
    else:
        assert out["r"] < out["best_r"] - 0.2


def test_unrelated_audio_gives_low_r():
    t = 150
    out = synthsync(_draw(_signal(t, 3)), BOX, _audio_for(_signal(t, 4)), max_lag=0)
    assert abs(out["r"]) < 0.35


def test_batch_synthsync_means_over_clips_against_own_and_mismatched_audio():
    sigs = [_signal(40, s) for s in (0, 1, 2)]
    frames = np.stack([_draw(s) for s in sigs])
    audio = np.stack([_audio_for(s) for s in sigs])
    boxes = np.array([BOX] * 3)
    out = batch_synthsync(frames, boxes, audio)
    assert out["r"] == pytest.approx(np.mean([synthsync(f, BOX, a)["r"] for f, a in zip(frames, audio)]))
    mismatched = [synthsync(frames[i], BOX, audio[i - 1])["r"] for i in range(3)]  # the previous clip's audio
    assert out["r_shuffled"] == pytest.approx(np.mean(mismatched))
    assert out["r"] > 0.9 and out["r"] > out["r_shuffled"] + 0.5
    alone = batch_synthsync(frames[:1], boxes[:1], audio[:1])  # one clip: its audio reversed in time
    assert alone["r_shuffled"] == pytest.approx(synthsync(frames[0], BOX, audio[0][::-1])["r"])


def test_bad_box_is_a_user_error():
    with pytest.raises(UserError, match="mouth_box"):
        mouth_opening(np.zeros((2, 8, 8, 3), np.uint8), (0.5, 0.5, 0.2, 0.9))


def test_real_synthtalk_clip():
    """On a SynthTalk clip the measured opening tracks the stored ground truth and its own audio."""
    from data_tools import synth

    clip = synth.make_clip(0, 0, 0, 4.0, 32)
    other = synth.make_clip(0, 7, 0, 4.0, 32)
    opening = mouth_opening(clip.frames, clip.box)
    assert np.corrcoef(opening, clip.opening)[0, 1] > 0.95
    true = synthsync(clip.frames, clip.box, clip.audio)
    shuffled = synthsync(clip.frames, clip.box, other.audio)
    assert true["r"] > 0.9 and true["best_lag"] == 0
    assert true["r"] > shuffled["r"] + 0.5
