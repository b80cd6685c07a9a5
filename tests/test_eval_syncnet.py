"""SyncNet: syncnet_v2 layout, MFCC alignment, the exact scoring definitions on planted offsets."""
import numpy as np
import pytest
import torch

from eval.syncnet import (
    SyncNet,
    audio_windows,
    embed,
    lip_windows,
    load_syncnet,
    mfcc_features,
    num_windows,
    sync_scores,
)
from lit_avatar.errors import UserError

# written from syncnet_python's SyncNetModel: Sequential indices of the conv/bn/linear layers
CONV_SHAPES = {
    "netcnnaud.0.weight": (64, 1, 3, 3), "netcnnaud.4.weight": (192, 64, 3, 3),
    "netcnnaud.8.weight": (384, 192, 3, 3), "netcnnaud.11.weight": (256, 384, 3, 3),
    "netcnnaud.14.weight": (256, 256, 3, 3), "netcnnaud.18.weight": (512, 256, 5, 4),
    "netcnnaud.19.running_mean": (512,), "netcnnaud.0.bias": (64,),
    "netfcaud.0.weight": (512, 512), "netfcaud.1.running_var": (512,), "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7), "netcnnlip.1.weight": (96,), "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.8.weight": (256, 256, 1, 3, 3), "netcnnlip.11.weight": (256, 256, 1, 3, 3),
    "netcnnlip.14.weight": (256, 256, 1, 3, 3), "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netcnnlip.19.bias": (512,), "netfclip.0.weight": (512, 512), "netfclip.3.bias": (1024,),
}


def test_layout_and_shapes_collapse_to_512():
    model = SyncNet()
    sd = model.state_dict()
    for key, shape in CONV_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    weights = sorted(k for k in sd if k.endswith(".weight") and sd[k].dim() > 1)
    assert len(weights) == 16  # 6 audio convs + 6 lip convs + 4 linears
    with torch.no_grad():
        assert model.netcnnaud(torch.zeros(2, 1, 13, 20)).shape == (2, 512, 1, 1)
        assert model.netcnnlip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)
        assert model.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)


def test_weight_round_trip(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in SyncNet().state_dict().items()}
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()
             if not k.endswith("num_batches_tracked")}  # the 2017 file predates num_batches_tracked
    torch.save(state, tmp_path / "syncnet_v2.model")
    model = load_syncnet(tmp_path / "syncnet_v2.model")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.save({"netcnnaud.0.weight": torch.zeros(64, 1, 3, 3)}, tmp_path / "bad.model")
    with pytest.raises(UserError, match=r"bad\.model: not a SyncNet weight file"):
        load_syncnet(tmp_path / "bad.model")


def test_mfcc_windows_align_four_columns_per_frame():
    t = 12
    audio = np.random.default_rng(0).standard_normal(t * 640).astype(np.float32) * 0.1
    mfcc = mfcc_features(audio)
    assert mfcc.shape == (13, 4 * t - 1)  # 1 + ceil((S - 400) / 160) frames at 100 Hz
    # the reference feeds scipy's int16 samples to python_speech_features' defaults
    from python_speech_features import mfcc as psf_mfcc

    as_int16 = np.round(audio * 32768).astype(np.int16)
    np.testing.assert_allclose(mfcc_features(as_int16 / 32768.0), psf_mfcc(as_int16, 16000).T, rtol=1e-5, atol=1e-4)
    # only the appended log energy (row 0) depends on the scale
    unscaled = psf_mfcc(audio.astype(np.float64), 16000).T
    np.testing.assert_allclose(mfcc[1:], unscaled[1:], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mfcc[0] - unscaled[0], np.log(32768.0 ** 2), rtol=1e-5)
    n = num_windows(t, len(audio))
    assert n == t - 5
    wins = audio_windows(mfcc, n)
    assert wins.shape == (n, 1, 13, 20)
    for v in range(n):
        np.testing.assert_array_equal(wins[v, 0].numpy(), mfcc[:, 4 * v: 4 * v + 20])
    # a short audio track limits the windows
    assert num_windows(t, 8 * 640 + 100) == 3
    crops = np.arange(t, dtype=np.float32)[:, None, None, None] * np.ones((1, 224, 224, 3), np.float32)
    lw = lip_windows(crops, 2, 3)
    assert lw.shape == (3, 3, 5, 224, 224) and float(lw[1, 0, 0, 0, 0]) == 3.0 and float(lw[1, 0, 4, 0, 0]) == 7.0


def _reference_scores(v, a, vshift):
    """Brute force from the definitions in REFERENCE.md."""
    n, d = v.shape
    offsets = range(-vshift, vshift + 1)
    mdist = []
    for k in offsets:
        ds = []
        for i in range(n):
            j = i + k
            other = a[j] if 0 <= j < n else np.zeros(d)
            ds.append(np.linalg.norm(v[i] - other + 1e-6))  # torch pairwise_distance adds eps 1e-6
        mdist.append(np.mean(ds))
    mdist = np.array(mdist)
    return mdist, mdist.min(), np.median(mdist) - mdist.min(), vshift - int(np.argmin(mdist))


@pytest.mark.parametrize("planted", [0, 3, -4])
def test_planted_offset_and_exact_definitions(planted):
    rng = np.random.default_rng(planted + 10)
    n, d = 60, 32
    base = rng.standard_normal((n + 40, d))
    video = base[20: 20 + n]
    # audio window j shows up in video window j + planted (video lags audio by `planted` frames), which
    # syncnet_python reports as a positive offset
    audio = base[20 + planted: 20 + planted + n] + 0.05 * rng.standard_normal((n, d))
    out = sync_scores(video, audio)
    mdist, dmin, conf, offset = _reference_scores(video, audio, 15)
    np.testing.assert_allclose(out["mdist"], mdist, rtol=1e-9)
    assert out["sync_d"] == pytest.approx(dmin, rel=1e-9)
    assert out["sync_c"] == pytest.approx(conf, rel=1e-9)
    assert out["offset"] == offset == planted
    assert out["sync_c"] > 1.0


def test_embed_end_to_end_matches_the_towers_window_by_window():
    """embed = each 5-frame lip window and its MFCC window through the towers, whatever the batching; the
    scores are the mean-distance definitions computed by hand over the 31 offsets."""
    torch.manual_seed(0)
    model = SyncNet().eval()
    crops = np.random.default_rng(0).uniform(0, 255, (8, 224, 224, 3)).astype(np.float32)
    audio = np.random.default_rng(1).standard_normal(8 * 640).astype(np.float32) * 0.1
    v, a = embed(model, crops, audio, batch_size=2)
    n = num_windows(len(crops), len(audio))
    assert n == 3 and v.shape == (n, 1024) and a.shape == (n, 1024)
    mfcc = audio_windows(mfcc_features(audio), n)
    with torch.no_grad():
        for i in range(n):
            torch.testing.assert_close(v[i], model.forward_lip(lip_windows(crops, i, 1))[0])
            torch.testing.assert_close(a[i], model.forward_aud(mfcc[i: i + 1])[0])
    v1, a1 = embed(model, crops, audio, batch_size=1)
    torch.testing.assert_close(v1, v)
    torch.testing.assert_close(a1, a)
    # the lip tower sees frame order: reversing the frames changes the windows' embeddings
    assert not torch.allclose(embed(model, crops[::-1].copy(), audio)[0], v)
    out = sync_scores(v, a)
    padded = torch.cat([torch.zeros(15, 1024), a.double(), torch.zeros(15, 1024)])
    mdist = torch.stack([torch.stack([(v[i].double() - padded[i + k]).norm() for i in range(n)]).mean()
                         for k in range(31)])
    np.testing.assert_allclose(out["mdist"], mdist.numpy(), rtol=1e-6)
    assert out["sync_d"] == pytest.approx(float(mdist.min()))
    assert out["sync_c"] == pytest.approx(float(mdist.median() - mdist.min()))
    assert out["offset"] == 15 - int(mdist.argmin())
