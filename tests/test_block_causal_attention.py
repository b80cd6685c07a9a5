"""The block-causal training attention (one unmasked SDPA call per query block) equals attention under the
dense block-causal mask, with and without the reference-sink prefix, including a last partial block."""
import pytest
import torch

from lit_avatar.models.attention import CausalWindow, causal_window_sdpa, sdpa
from lit_avatar.models.dit import block_causal_mask


@pytest.mark.parametrize("frames,with_prefix", [(6, True), (7, True), (5, False)])
def test_block_causal_sdpa_equals_dense_mask(frames, with_prefix):
    torch.manual_seed(0)
    n, fpb, heads, dim = 4, 2, 2, 8
    q, k, v = (torch.randn(2, frames * n, heads, dim) for _ in range(3))
    prefix = (torch.randn(2, n, heads, dim), torch.randn(2, n, heads, dim)) if with_prefix else None
    mask = block_causal_mask(frames, n, fpb, prefix_tokens=n if with_prefix else 0)
    keys = torch.cat([prefix[0], k], 1) if with_prefix else k
    values = torch.cat([prefix[1], v], 1) if with_prefix else v
    dense = sdpa(q, keys, values, mask)
    torch.testing.assert_close(causal_window_sdpa(q, k, v, CausalWindow(n, fpb), prefix), dense, rtol=0, atol=1e-5)


def test_dit_block_causal_forward_ignores_later_blocks():
    """Changing a later block's input leaves earlier blocks' outputs untouched; the reverse does not."""
    from lit_avatar.models.dit import AvatarDiT

    torch.manual_seed(0)
    model = AvatarDiT(preset="micro").eval()
    x = torch.randn(1, 12, 4, 4, 4)
    audio = torch.randn(1, 4, 5, 16)
    ref = torch.randn(1, 12, 1, 4, 4)
    t = torch.full((1,), 500.0)
    with torch.no_grad():
        base = model(x, t, audio=audio, ref=ref, frames_per_block=2)
        later = x.clone()
        later[:, :, 2:] += 1.0
        changed = model(later, t, audio=audio, ref=ref, frames_per_block=2)
    torch.testing.assert_close(changed[:, :, :2], base[:, :, :2], rtol=0, atol=1e-6)
    assert (changed[:, :, 2:] - base[:, :, 2:]).abs().max() > 1e-3
