"""Each rollout option changes exactly what it should."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lit_avatar.errors import UserError
from lit_avatar.inference.options import MCIOptions, PSBOptions, RolloutOptions, URCROptions
from lit_avatar.inference.rollout import Rollout
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.presets import get_preset


class RecordingModel(AvatarDiT):
    """Records every cached forward: (timestep, latents, write_frames)."""

    def __init__(self):
        super().__init__(config=get_preset("micro", num_layers=1))
        self.calls = []

    def forward_cached(self, x, timestep, frame_positions, cache, audio_tokens=None, write_frames=None, **kwargs):
        self.calls.append((timestep.clone(), x.clone(), write_frames, [int(p) for p in frame_positions]))
        return super().forward_cached(x, timestep, frame_positions, cache, audio_tokens, write_frames, **kwargs)


def _run(options: RolloutOptions, blocks: int = 5, training: bool = False):
    torch.manual_seed(0)
    model = RecordingModel().eval()
    rollout = Rollout(model, options, training=training)
    outs = []
    with torch.no_grad():
        rollout.begin(torch.randn(1, 12, 1, 4, 4), None, 1, (4, 4), generator=torch.Generator().manual_seed(1))
        for _ in range(blocks):
            outs.append(rollout.next_block(None, shape=(1, 12, options.frames_per_block, 4, 4)))
    return model, rollout, outs


BASE = RolloutOptions(frames_per_block=2, psb=PSBOptions(steps=[4, 3, 2]), mci=MCIOptions(sigma=0.2),
                      urcr=URCROptions(max_frames=8, keep_frames=2))


def test_psb_on_uses_the_step_list_then_repeats_the_last():
    _, rollout, _ = _run(BASE)
    assert [len(r.sigmas) - 1 for r in rollout.records] == [4, 3, 2, 2, 2]
    # All lists come from one schedule: each is a subset of the 4-step schedule.
    full = set(round(s, 6) for s in rollout.records[0].sigmas)
    assert all(set(round(s, 6) for s in r.sigmas) <= full for r in rollout.records)


def test_psb_off_gives_every_block_the_same_steps():
    _, rollout, _ = _run(dataclasses.replace(BASE, psb=PSBOptions(enabled=False, steps=[4, 3, 2])))
    assert {len(r.sigmas) - 1 for r in rollout.records} == {2}
    assert {r.forwards for r in rollout.records} == {3}  # 2 denoising forwards + 1 cache write


def _writes(model):
    return [(t, x, frames) for t, x, frames, _ in model.calls if frames is not None]


def test_mci_off_writes_the_clean_output_at_s_zero():
    options = dataclasses.replace(BASE, mci=MCIOptions(enabled=False), urcr=URCROptions(enabled=False))
    model, rollout, outs = _run(options)
    writes = _writes(model)
    assert len(writes) == len(outs)
    for (t, x, _), out in zip(writes, outs):
        assert torch.all(t == 0)
        assert torch.equal(x, out)
    assert {r.context_sigma for r in rollout.records} == {0.0}


def test_mci_on_writes_a_noised_context_at_its_level():
    model, rollout, outs = _run(dataclasses.replace(BASE, urcr=URCROptions(enabled=False)))
    for (t, x, _), out in zip(_writes(model), outs):
        assert torch.allclose(t, torch.tensor([200.0]))
        assert not torch.allclose(x, out)
    # Training draws the level per block from [min, max].
    model, rollout, _ = _run(dataclasses.replace(BASE, mci=MCIOptions(min=0.1, max=0.3)), blocks=8, training=True)
    levels = [r.context_sigma for r in rollout.records]
    assert all(0.1 <= s <= 0.3 for s in levels) and len(set(levels)) > 1


def test_mci_does_not_change_denoising_of_the_first_block():
    m_on, _, outs_on = _run(BASE, blocks=1)
    m_off, _, outs_off = _run(dataclasses.replace(BASE, mci=MCIOptions(enabled=False)), blocks=1)
    assert torch.equal(outs_on[0], outs_off[0])


def test_urcr_reset_reencodes_kept_frames_from_position_zero():
    model, rollout, _ = _run(BASE, blocks=6)
    resets = [r for r in rollout.records if r.reset]
    assert resets and resets[0].index == 4  # positions 0..7 fill the horizon of 8
    assert resets[0].positions == [2, 3]  # after keep_frames=2 re-encoded at 0, 1
    reencode = [pos for t, x, frames, pos in model.calls if frames is not None and pos == [0, 1]]
    assert len(reencode) == 2  # the first block's write, and the reset's re-encode


def test_bad_options_name_the_field():
    with pytest.raises(UserError, match="rollout.urcr"):
        RolloutOptions(frames_per_block=3, urcr=URCROptions(max_frames=4, keep_frames=3))
    with pytest.raises(UserError, match="rollout.psb.steps"):
        RolloutOptions(psb=PSBOptions(steps=[]))
