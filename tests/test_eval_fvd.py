"""FVD: clip preprocessing, the detector call convention, Frechet of clip features."""
import numpy as np
import pytest
import torch

from eval.frechet import frechet_distance_features
from eval.fvd import I3DFeatures, clip_starts, iter_clips, load_i3d, preprocess_clip, video_features
from lit_avatar.errors import UserError


class TinyI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript: same keyword arguments, 400-d features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        if rescale or resize or not return_features:
            raise RuntimeError("called with the wrong flags")
        if x.shape[1:] != (3, 16, 224, 224):
            raise RuntimeError("expected [N,3,16,224,224]")
        stats = torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1)
        return self.proj(stats)


@pytest.fixture()
def detector_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    return path


def test_preprocess_short_side_and_centre_crop():
    frames = np.zeros((16, 56, 112, 3), np.uint8)
    frames[:, :, 28:84] = 255  # the central half of the width is white
    clip = preprocess_clip(frames)
    assert clip.shape == (3, 16, 224, 224)
    assert clip.min() >= -1 and clip.max() == 1
    assert preprocess_clip(np.zeros((16, 8, 8, 3), np.uint8)).max() == -1  # black maps to -1
    # 56x112 -> 224x448, centre crop keeps columns 112..336 of the resized image, i.e. only the white band
    assert torch.all(clip[:, :, :, 4:-4] == 1) and clip[:, :, :, 0].mean() < 1


def test_clip_selection():
    assert clip_starts(40) == [0, 16]
    assert clip_starts(10) == [0]
    clips = list(iter_clips(np.arange(10)[:, None, None, None].repeat(3, -1)))
    assert len(clips) == 1 and clips[0].shape[0] == 16 and clips[0][-1, 0, 0, 0] == 9


def test_features_and_fvd(detector_path):
    extractor = I3DFeatures(load_i3d(detector_path))
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 255, (32, 40, 48, 3), dtype=np.uint8) for _ in range(3)]
    fake = [np.clip(v.astype(int) // 2 + 60, 0, 255).astype(np.uint8) for v in real]
    fr = video_features(extractor, real, batch_size=4)
    ff = video_features(extractor, fake, batch_size=4)
    assert fr.shape == (6, 400)
    # batching does not change features
    np.testing.assert_allclose(video_features(extractor, real, batch_size=1), fr, rtol=1e-5, atol=1e-6)
    assert frechet_distance_features(fr, fr) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_features(fr, ff) > 1e-3


def test_missing_detector(tmp_path):
    with pytest.raises(UserError, match="i3d_torchscript.pt: not found; expected an I3D TorchScript file"):
        load_i3d(tmp_path / "i3d_torchscript.pt")


def test_fvd_protocols_take_one_whole_frame_clip_or_every_cropped_clip():
    from eval.fvd import protocol_clips

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (40, 90, 160, 3), dtype=np.uint8)
    video[:, :, :10] = 255  # a white band at the left edge: kept by a whole-frame resize, cut by a centre crop
    one = protocol_clips(video, "stylegan-v")
    assert len(one) == 1 and one[0].shape == (3, 16, 224, 224)
    assert (torch.allclose(one[0][:, :, :, :5], torch.ones(1))
            and not torch.equal(one[0], protocol_clips(video[1:], "stylegan-v")[0]))
    every = protocol_clips(video, "all-clips")
    assert len(every) == 2 and (every[0][:, :, :, :5] < 0.99).any()
    assert protocol_clips(video[:10], "stylegan-v") == []  # shorter than a clip: left out, as StyleGAN-V does
    assert len(protocol_clips(video[:10], "all-clips")) == 1
    with pytest.raises(ValueError, match="unknown FVD protocol"):
        protocol_clips(video, "disco")
