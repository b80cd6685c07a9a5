"""FID InceptionV3: pytorch-fid weight layout, FID-specific pooling, round trip and feature shape."""
import pytest
import torch
import torch.nn.functional as F

from eval.fid import FIDInceptionV3, load_fid_inception
from lit_avatar.errors import UserError

# torchvision's inception_v3 has 27,161,264 parameters (1000 classes, with AuxLogits). The FID graph has no
# AuxLogits (conv0 768->128 1x1 + bn, conv1 128->768 5x5 + bn, fc 768->1000) and 1008 classes.
TORCHVISION_PARAMS = 27_161_264
AUX_PARAMS = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
FID_PARAMS = TORCHVISION_PARAMS - AUX_PARAMS + 8 * 2048 + 8

# (key, shape) spot checks across every block type, written from the torchvision naming scheme
EXPECTED = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def test_layout_matches_pytorch_fid_file():
    model = FIDInceptionV3()
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == FID_PARAMS
    for key, shape in EXPECTED.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in sd)
    # 94 conv+bn units, each conv.weight + bn.{weight,bias,running_mean,running_var,num_batches_tracked}
    assert sum(k.endswith(".conv.weight") for k in sd) == 94
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_round_trip_and_features(tmp_path):
    torch.manual_seed(0)
    src = FIDInceptionV3()
    # He-scaled conv weights keep the signal alive through 94 layers; BatchNorm statistics perturbed so
    # that every tensor is distinctive
    state = dict(src.state_dict())
    for k, v in state.items():
        if k.endswith("conv.weight"):
            state[k] = torch.randn_like(v) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            state[k] = 1 + 0.1 * torch.rand_like(v)
        elif k.endswith(("bn.bias", "running_mean")):
            state[k] = 1e-3 * torch.randn_like(v)
    # old pytorch-fid files have no num_batches_tracked; an AuxLogits leftover must be ignored
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    model = load_fid_inception(path)
    for k, v in model.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), k
    x = torch.rand(2, 3, 40, 56)
    # preprocessing: bilinear to 299 (align_corners=False), then 2x-1; a 299 input is left as is
    expected = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(model.preprocess(x), expected)
    torch.testing.assert_close(model.preprocess(expected * 0.5 + 0.5), expected, rtol=0, atol=1e-6)
    # the network itself at InceptionV3's smallest input (75 px) keeps the test fast
    model.resize_input = False
    with torch.no_grad():
        feats = model(F.interpolate(x, size=(75, 75), mode="bilinear", align_corners=False))
    assert feats.shape == (2, 2048)
    assert torch.all(feats >= 0)  # pool3 follows a ReLU
    assert (feats[0] - feats[1]).abs().max() > 1e-3 * feats.abs().max() > 0  # depends on the image


def test_fid_specific_pooling():
    torch.manual_seed(1)
    model = FIDInceptionV3()
    seen = {}

    def grab(name):
        return lambda _m, args: seen.__setitem__(name, args[0])

    model.Mixed_5b.branch_pool.register_forward_pre_hook(grab("5b"))
    model.Mixed_7c.branch_pool.register_forward_pre_hook(grab("7c"))
    x5 = torch.rand(1, 192, 5, 5)
    x7 = torch.rand(1, 2048, 3, 3)
    with torch.no_grad():
        model.Mixed_5b(x5)
        model.Mixed_7c(x7)
    # corner of a padding-excluded 3x3 average = mean of the 4 real pixels
    torch.testing.assert_close(seen["5b"][0, :, 0, 0], x5[0, :, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(seen["7c"], F.max_pool2d(x7, 3, stride=1, padding=1))


def test_bad_weight_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_fid_inception(tmp_path / "missing.pth")
    state = FIDInceptionV3().state_dict()
    state.pop("Mixed_6c.branch1x1.conv.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"partial\.pth.*missing.*Mixed_6c"):
        load_fid_inception(tmp_path / "partial.pth")
