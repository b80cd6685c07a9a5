"""Tiny decoder (TAEHV taew2_1 layout): key layout, frame-by-frame equivalence, streaming, loading, the swap.

Parity with the reference (madebyollin/taehv's taehv.py, TAEHV(checkpoint_path=None), i.e. the taew2_1 layout,
its random weights x1.7 saved as .pth and .safetensors and loaded with load_tiny_decoder; latents [2, 16, 7, 8, 10]):
max |ours - reference| = 0.0 against decode_video(parallel=True), decode_video(parallel=False), and, for our
stream decoder fed chunks of 3+2+2 latents, against StreamingTAEHV fed one latent at a time (scratch script run
outside the repository: `.venv/bin/python /tmp/taehv_parity/parity.py`, BENCHMARKS.md "Tiny decoder").
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lit_avatar.errors import UserError
from lit_avatar.models.taehv import TinyDecodedVAE, TinyDecoder, _MemBlock, _TimeGrow, load_tiny_decoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# written from TAEHV's decoder Sequential for taew2_1 (latent 16, widths 256/128/64/64, time growth 1, 2, 2)
WAN21_SHAPES = {
    "decoder.1.weight": (256, 16, 3, 3), "decoder.1.bias": (256,),
    "decoder.3.conv.0.weight": (256, 512, 3, 3), "decoder.3.conv.4.bias": (256,),
    "decoder.5.conv.2.weight": (256, 256, 3, 3), "decoder.7.conv.weight": (256, 256, 1, 1),
    "decoder.8.weight": (128, 256, 3, 3), "decoder.9.conv.0.weight": (128, 256, 3, 3),
    "decoder.13.conv.weight": (256, 128, 1, 1), "decoder.14.weight": (64, 128, 3, 3),
    "decoder.17.conv.4.weight": (64, 64, 3, 3), "decoder.19.conv.weight": (128, 64, 1, 1),
    "decoder.20.weight": (64, 64, 3, 3), "decoder.22.weight": (3, 64, 3, 3), "decoder.22.bias": (3,),
}


def _small(seed: int = 0, channels: int = 4) -> TinyDecoder:
    torch.manual_seed(seed)
    model = TinyDecoder(channels, (8, 6, 4, 4)).eval()
    with torch.no_grad():  # larger than the default init, so outputs are not clamped flat
        for p in model.parameters():
            p.mul_(2.0)
    return model


def test_taew2_1_key_layout():
    state = TinyDecoder().state_dict()
    for key, shape in WAN21_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # stem 2 + 9 memory blocks x 3 convs x 2 + 3 time-growth + 3 stage convs (no bias) + head 2
    assert len(state) == 64 and "decoder.8.bias" not in state and all(k.startswith("decoder.") for k in state)


def _frame_by_frame(model: TinyDecoder, latents: torch.Tensor) -> torch.Tensor:
    """An independent walk of the graph one frame at a time (TAEHV's sequential mode), untrimmed [B,3,4t,H,W]."""
    last: dict[int, torch.Tensor] = {}

    def walk(x: torch.Tensor, start: int) -> list[torch.Tensor]:
        for index in range(start, len(model.decoder)):
            layer = model.decoder[index]
            if isinstance(layer, _MemBlock):
                past = last.get(index, torch.zeros_like(x))
                last[index] = x
                x = layer(x, past)
            elif isinstance(layer, _TimeGrow):
                grown = layer.conv(x).chunk(layer.stride, dim=1)  # channel groups are frames in time order
                return [frame for part in grown for frame in walk(part, index + 1)]
            else:
                x = layer(x)
        return [x]

    frames = [frame for t in range(latents.shape[2]) for frame in walk(latents[:, :, t], 0)]
    return torch.stack(frames, dim=2)


def test_decode_equals_a_frame_by_frame_walk_on_the_causal_grid():
    model = _small()
    latents = torch.randn(2, 4, 3, 2, 3)
    with torch.no_grad():
        video = model.decode(latents)
        expected = _frame_by_frame(model, latents)[:, :, 3:].clamp(0, 1) * 2 - 1
    assert video.shape == (2, 3, 1 + 4 * 2, 16, 24)
    assert 0.2 < ((video > -1) & (video < 1)).float().mean() and video.std() > 0.05  # not flat
    torch.testing.assert_close(video, expected, atol=1e-5, rtol=0)
    # the second video of the batch does not leak into the first one's memory
    with torch.no_grad():
        torch.testing.assert_close(model.decode(latents[1:]), video[1:], atol=1e-5, rtol=0)


def test_stream_decoder_equals_whole_clip_decode():
    model = _small(1)
    latents = torch.randn(1, 4, 7, 3, 2)
    stream = model.stream_decoder()
    with torch.no_grad():
        parts = [stream(chunk) for chunk in latents.split([1, 2, 3, 1], dim=2)]
        whole = model.decode(latents)
    assert [p.shape[2] for p in parts] == [1, 8, 12, 4]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)
    stream.reset()  # a new video starts from empty memory and trims again
    with torch.no_grad():
        torch.testing.assert_close(stream(latents[:, :, :2]), whole[:, :, :5], atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_load_in_the_reference_layout(tmp_path, suffix):
    model = _small(2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    extra = torch.randn(8, 8, 1, 1)  # a time-growth conv stored with 2 frames' rows: the last frame's rows count
    state["decoder.7.conv.weight"] = torch.cat([extra, state["decoder.7.conv.weight"]])
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)  # the encoder half of a TAEHV file is ignored
    path = tmp_path / f"taew2_1{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_tiny_decoder(path)
    assert loaded.latent_channels == 4 and loaded.widths == (8, 6, 4, 4) and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_weight_file_mistakes_are_named(tmp_path):
    with pytest.raises(UserError, match=r"--decoder-path .*missing\.pth: not found; expected a TAEHV"):
        load_tiny_decoder(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"junk\.pth: cannot read as a weight file"):
        load_tiny_decoder(tmp_path / "junk.pth")
    state = _small().state_dict()
    torch.save({k: v for k, v in state.items() if k != "decoder.14.weight"}, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"cut\.pth: no 4-D tensor 'decoder\.14\.weight'"):
        load_tiny_decoder(tmp_path / "cut.pth")
    torch.save({**state, "decoder.22.weight": torch.zeros(12, 4, 3, 3)}, tmp_path / "patched.pth")
    with pytest.raises(UserError, match=r"patched\.pth: decoder\.22\.weight makes 12 channels; expected 3"):
        load_tiny_decoder(tmp_path / "patched.pth")
    torch.save({**state, "decoder.3.conv.2.weight": torch.zeros(8, 8, 1, 1)}, tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"decoder\.3\.conv\.2\.weight has shape \(8, 8, 1, 1\), expected"):
        load_tiny_decoder(tmp_path / "shape.pth")


def test_swap_refuses_a_vae_of_another_latent_grid():
    from lit_avatar.models.vae import PatchVAE

    with pytest.raises(UserError, match=r"PatchVAE makes latents of 12 channels, 1x in time, 2x in space; the tiny "
                                        r"decoder decodes 4 channels, 4x, 8x"):
        TinyDecodedVAE(PatchVAE(spatial_factor=2), _small())
