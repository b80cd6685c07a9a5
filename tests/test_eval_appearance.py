"""The appearance score and the verdict: noise, a frozen frame and the real clip land where they should."""
import numpy as np
import pytest
import torch

from data_tools.synth import make_clip
from eval.appearance import APPEARANCE_PASS_SSIM, appearance, judge, masked_ssim_psnr, outside_mouth_mask
from eval.synthsync import synthsync
from lit_avatar.errors import UserError


@pytest.fixture(scope="module")
def clip():
    return make_clip(0, 7, 1, 4.0, 32)


def _verdict(frames, clip):
    app = appearance(frames, clip.frames, clip.box, clip.ref)
    r = synthsync(frames, clip.box, clip.audio)["r"]
    r_shuffled = synthsync(frames, clip.box, clip.audio[::-1].copy())["r"]
    return app, judge(app["ssim_outside_mouth"], r, r_shuffled), r


def test_real_clip_passes_both(clip):
    app, verdict, r = _verdict(clip.frames, clip)
    assert app["ssim_outside_mouth"] == pytest.approx(1.0, abs=1e-5)  # SSIM runs in float32
    assert app["psnr_outside_mouth"] > 60
    assert app["ref_ssim"] > 0.9  # the same person and background as the reference
    assert verdict.passed and verdict.reason == "" and verdict.credited_r == pytest.approx(r)


def test_frozen_reference_frame_fails_sync_only(clip):
    frozen = np.repeat(clip.ref[None], len(clip.frames), 0)
    app, verdict, r = _verdict(frozen, clip)
    assert app["ssim_outside_mouth"] > 0.9 and app["ref_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert verdict.appearance_pass and not verdict.sync_pass
    assert "no lip sync" in verdict.reason


def test_noise_fails_appearance_and_gets_no_sync_credit(clip):
    """Noise whose darkness inside the mouth box follows the audio passes SynthSync, but is not credited."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, clip.frames.shape, dtype=np.uint8)
    h, w = noise.shape[1:3]
    x0, y0, x1, y1 = clip.box
    rows, cols = slice(int(y0 * h), int(np.ceil(y1 * h))), slice(int(x0 * w), int(np.ceil(x1 * w)))
    # a dark patch in the mouth box whose size follows the true opening: the SynthSync cheat of the issue
    for t, opening in enumerate(clip.opening / max(clip.opening.max(), 1e-6)):
        box = noise[t, rows, cols]
        box[: int(round(opening * box.shape[0]))] = 0
    app, verdict, r = _verdict(noise, clip)
    assert r > 0.5  # SynthSync alone is fooled
    assert app["ssim_outside_mouth"] < 0.1 < APPEARANCE_PASS_SSIM
    assert not verdict.appearance_pass and verdict.credited_r == 0.0
    assert "do not show the held-out identity" in verdict.reason


def test_ssim_matches_torchmetrics_on_full_frames_and_psnr_formula():
    """The masked mean of torchmetrics' SSIM map, and PSNR equal to torchmetrics' on the masked pixels."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    box = (0.0, 0.0, 1e-3, 1e-3)
    ssim, psnr = masked_ssim_psnr(a, b, box)
    mask = outside_mouth_mask(box, 24, 24)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255
    _, full = structural_similarity_index_measure(ta, tb, data_range=1.0, reduction="none", return_full_image=True)
    expected = (full.mean(1).numpy() * mask).sum((1, 2)) / mask.sum()
    np.testing.assert_allclose(ssim, expected, rtol=1e-6)  # the float64 reference; ours runs SSIM in float32
    assert mask.sum() < 24 * 24  # the padded box does mask some pixels
    mask_t = torch.from_numpy(mask)
    ref_psnr = [float(peak_signal_noise_ratio(ta[i:i + 1] * mask_t, tb[i:i + 1] * mask_t, data_range=1.0))
                for i in range(3)]
    # torchmetrics' PSNR averages over all pixels; masked pixels are 0 in both, so rescale its MSE
    scale = mask.size / mask.sum()
    # torchmetrics sums in float32
    np.testing.assert_allclose(psnr, np.array(ref_psnr) - 10 * np.log10(scale), rtol=1e-6)


def test_bad_box_is_a_user_error():
    with pytest.raises(UserError, match="mouth_box"):
        outside_mouth_mask((0.0, 0.0, 1.0), 8, 8)
    with pytest.raises(UserError, match="covers the whole frame"):
        outside_mouth_mask((0.0, 0.0, 1.0, 1.0), 8, 8)


def test_eval_cli_reports_appearance_and_credits_sync_only_where_it_passes(tmp_path, clip):
    """`lit-avatar eval --metrics synthsync,appearance`: the real clip is credited, mouth-box noise is not."""
    import json

    from eval.cli import main_eval
    from lit_avatar.data import media

    gen, real = tmp_path / "gen", tmp_path / "real"
    gen.mkdir()
    real.mkdir()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, clip.frames.shape, dtype=np.uint8)
    h, w = noise.shape[1:3]
    x0, y0, x1, y1 = clip.box
    for t, o in enumerate(clip.opening / max(clip.opening.max(), 1e-6)):
        box = noise[t, int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))]
        box[: int(round(o * box.shape[0]))] = 0
    for name, frames in (("copy", clip.frames), ("noise", noise)):
        media.write_video(gen / f"{name}.mp4", frames, fps=25, audio=clip.audio)
        (gen / f"{name}.json").write_text(json.dumps({"mouth_box": list(clip.box)}))
        media.write_video(real / f"{name}.mp4", clip.frames, fps=25, audio=clip.audio)
    out = tmp_path / "r.json"
    assert main_eval(["--gen", str(gen), "--real", str(real), "--metrics", "synthsync,appearance", "--out", str(out),
                      "--no-progress"]) == 0
    videos = json.loads(out.read_text())["videos"]
    assert videos["copy"]["ssim_outside_mouth"] > 0.95 and videos["copy"]["appearance_pass"]
    assert videos["copy"]["synthsync_r_credited"] == pytest.approx(videos["copy"]["synthsync_r"])
    assert videos["noise"]["synthsync_r"] > 0.3  # fooled alone ...
    assert (videos["noise"]["ssim_outside_mouth"] < 0.2
            and videos["noise"]["synthsync_r_credited"] == 0.0)  # ... not credited
    assert json.loads(out.read_text())["aggregate"]["appearance_pass_rate"] == 0.5
