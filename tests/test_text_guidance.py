"""Separate text guidance: AvatarGuidance's text scale (InfiniteTalk's split), passes skipped at scale 1, the
two-scale formula unchanged without text, and the teacher sampler, ODE-init trajectories and DMD real score."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lit_avatar.diffusion import AvatarGuidance, cfg, chained_cfg
from lit_avatar.models.dit import ClipConditions
from lit_avatar.modules.dmd import DMDLoss

TEXT = torch.linspace(-1, 1, 2 * 3 * 4).reshape(2, 3, 4)
NEGATIVE = torch.linspace(0.5, -0.7, 3 * 4).reshape(1, 3, 4)


class Conditioned(nn.Module):
    """A non-linear velocity of x and every condition (so any change of pass or order changes bits); records
    which conditions each call had: (audio, ref, text) with text as "text", "negative" or None."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, timestep, audio=None, ref=None, text=None):
        name = None if text is None else ("negative" if torch.equal(text[:1], NEGATIVE) else "text")
        has_audio = audio is not None and bool(audio.abs().sum() > 0)
        has_ref = ref is not None and bool(ref.abs().sum() > 0)
        self.calls.append((has_audio, has_ref, name))
        lead = (-1,) + (1,) * (x.ndim - 1)
        a = audio.flatten(1).mean(1).reshape(lead) if audio is not None else 0.0
        r = ref.flatten(1).mean(1).reshape(lead) if ref is not None else 0.0
        t = text.flatten(1).square().mean(1).reshape(lead) if text is not None else 0.37
        return torch.tanh(x * (1.3 + a) + r) * (0.7 + t) + 1e-3 * timestep.reshape(lead)


def _two_scale(model, x, timestep, audio, ref, text, audio_scale, ref_scale):
    """AvatarGuidance.velocity before text had its own scale (main at b08ee77), verbatim in substance."""
    full = model(x, timestep, audio=audio, ref=ref, text=text)
    if audio_scale == 1.0 and ref_scale == 1.0:
        return full
    null_audio = None if audio is None else torch.zeros_like(audio)
    no_audio = model(x, timestep, audio=null_audio, ref=ref, text=text)
    if ref_scale == 1.0:
        return cfg(full, no_audio, audio_scale)
    null_ref = None if ref is None else torch.zeros_like(ref)
    null = model(x, timestep, audio=null_audio, ref=null_ref, text=None)
    return chained_cfg([null, no_audio, full], [ref_scale, audio_scale])


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 2, 2, generator=g)
    audio, ref = torch.rand(2, 3, 5, 6, generator=g) + 0.1, torch.rand(2, 4, 1, 2, 2, generator=g) + 0.1
    return x, torch.tensor([400.0, 700.0]), audio, ref


SCALES = (1.0, 0.5, 2.0, 4.5)


@pytest.mark.parametrize("audio_scale,ref_scale,text_scale", list(itertools.product(SCALES, SCALES, SCALES)))
def test_without_text_or_at_text_scale_1_the_two_scale_formula_is_unchanged_bit_for_bit(audio_scale, ref_scale,
                                                                                        text_scale):
    x, t, audio, ref = _inputs()
    guidance = AvatarGuidance(audio_scale, ref_scale, text_scale)
    for text in (None, TEXT) if text_scale == 1.0 else (None,):
        ours, before = Conditioned(), Conditioned()
        v = guidance.velocity(ours, x, t, audio, ref, text, negative_text=NEGATIVE)
        expected = _two_scale(before, x, t, audio, ref, text, audio_scale, ref_scale)
        assert torch.equal(v, expected) and ours.calls == before.calls
        assert len(ours.calls) == guidance.forwards(with_text=text is not None)


def test_text_guidance_is_infinitetalks_split_over_the_negative_prompt():
    """ref_scale 1: uncond + text (cond - drop_text) + audio (drop_text - uncond), InfiniteTalk's formula, with
    drop_text = (audio, ref, negative) and uncond = (0, ref, negative); 3 forwards."""
    x, t, audio, ref = _inputs()
    model = Conditioned()
    v = AvatarGuidance(audio_scale=4.0, ref_scale=1.0, text_scale=5.0).velocity(model, x, t, audio, ref, TEXT,
                                                                                 negative_text=NEGATIVE)
    assert model.calls == [(True, True, "text"), (True, True, "negative"), (False, True, "negative")]
    probe = Conditioned()
    cond = probe(x, t, audio=audio, ref=ref, text=TEXT)
    drop_text = probe(x, t, audio=audio, ref=ref, text=NEGATIVE.expand(2, -1, -1))
    uncond = probe(x, t, audio=torch.zeros_like(audio), ref=ref, text=NEGATIVE.expand(2, -1, -1))
    torch.testing.assert_close(v, uncond + 5.0 * (cond - drop_text) + 4.0 * (drop_text - uncond))


def test_the_reference_stays_innermost_and_the_null_text_stands_in_without_a_negative_prompt():
    x, t, audio, ref = _inputs()
    model = Conditioned()
    v = AvatarGuidance(audio_scale=4.0, ref_scale=1.5, text_scale=3.0).velocity(model, x, t, audio, ref, TEXT)
    assert model.calls == [(True, True, "text"), (True, True, None), (False, True, None), (False, False, None)]
    probe = Conditioned()
    full, no_text = probe(x, t, audio, ref, TEXT), probe(x, t, audio, ref, None)
    no_audio = probe(x, t, torch.zeros_like(audio), ref, None)
    null = probe(x, t, torch.zeros_like(audio), torch.zeros_like(ref), None)
    torch.testing.assert_close(v, null + 1.5 * (no_audio - null) + 4.0 * (no_text - no_audio) + 3.0 * (full - no_text))


@pytest.mark.parametrize("audio_scale,ref_scale,text_scale,forwards", [
    (1.0, 1.0, 1.0, 1), (1.0, 1.0, 5.0, 2), (4.0, 1.0, 1.0, 2), (4.0, 1.0, 5.0, 3), (4.0, 2.0, 1.0, 3),
    (4.0, 2.0, 5.0, 4), (1.0, 2.0, 5.0, 4)])
def test_passes_whose_scale_is_1_are_skipped(audio_scale, ref_scale, text_scale, forwards):
    x, t, audio, ref = _inputs()
    model = Conditioned()
    guidance = AvatarGuidance(audio_scale, ref_scale, text_scale)
    v = guidance.velocity(model, x, t, audio, ref, TEXT, NEGATIVE)
    assert len(model.calls) == forwards == guidance.forwards(with_text=True)
    every = Conditioned()  # the same chain with every pass run: scale-1 passes only cancel
    full, no_text = every(x, t, audio, ref, TEXT), every(x, t, audio, ref, NEGATIVE.expand(2, -1, -1))
    zeros = torch.zeros_like(audio)
    no_audio, null = every(x, t, zeros, ref, NEGATIVE), every(x, t, zeros, torch.zeros_like(ref), NEGATIVE)
    if text_scale == 1.0:  # text rides with the reference, the null pass drops it to the null text
        no_audio, null = every(x, t, zeros, ref, TEXT), every(x, t, zeros, torch.zeros_like(ref), None)
        no_text = full
    expected = chained_cfg([null, no_audio, no_text, full], [ref_scale, audio_scale, text_scale])
    torch.testing.assert_close(v, expected)


class FixedX0(nn.Module):
    """A score whose clean estimate x0 = x_t - s v is fixed per kind of call: by (audio given, text kind)."""

    def __init__(self, x0_of):
        super().__init__()
        self.x0_of, self.calls = x0_of, []

    def forward(self, x, timestep, audio=None, ref=None, text=None):
        name = None if text is None else ("negative" if torch.equal(text[:1], NEGATIVE) else "text")
        kind = (audio is not None and bool(audio.abs().sum() > 0), name)
        self.calls.append(kind)
        return (x - self.x0_of[kind]) / (timestep / 1000).reshape(-1, 1, 1, 1, 1)


def _dmd_case():
    as_x = lambda *v: torch.tensor(v).reshape(1, 1, 1, 2, 2).expand(2, -1, -1, -1, -1)  # noqa: E731
    x0_of = {(True, "text"): as_x(1.0, 1.0, 1.0, 1.0), (True, "negative"): as_x(0.0, 2.0, 1.0, 1.0),
             (False, "negative"): as_x(0.0, 0.0, 3.0, 1.0), (False, "text"): as_x(2.0, 0.0, 0.0, 1.0),
             (True, None): as_x(5.0, 1.0, 1.0, 1.0), (False, None): as_x(1.0, 1.0, 1.0, 3.0)}
    x = torch.arange(8.0).reshape(2, 1, 1, 2, 2)
    conds = ClipConditions(torch.ones(2, 1, 5, 4), torch.ones(2, 1, 1, 2, 2), TEXT)
    return x, conds, x0_of, as_x


def test_dmd_real_score_with_text_guidance():
    """pred = cond + g_t (cond - no_text) + g (no_text - uncond), in x0 space, 3 teacher passes; without text or
    at g_t = 0 the real score is the audio-CFG one as before (2 passes)."""
    x, conds, x0_of, as_x = _dmd_case()
    sigma = torch.tensor([0.5, 0.8])
    teacher = FixedX0(x0_of)
    real = DMDLoss(guidance_scale=3.0, text_guidance_scale=4.0).real_x0(teacher, x, sigma, conds, NEGATIVE)
    assert teacher.calls == [(True, "text"), (True, "negative"), (False, "negative")]
    cond, no_text, uncond = x0_of[(True, "text")], x0_of[(True, "negative")], x0_of[(False, "negative")]
    torch.testing.assert_close(real, cond + 4.0 * (cond - no_text) + 3.0 * (no_text - uncond))
    for text, g_t in ((TEXT, 0.0), (None, 4.0)):
        teacher = FixedX0(x0_of)
        plain = ClipConditions(conds.audio, conds.ref, text)
        real = DMDLoss(guidance_scale=3.0, text_guidance_scale=g_t).real_x0(teacher, x, sigma, plain, NEGATIVE)
        name = None if text is None else "text"
        assert teacher.calls == [(True, name), (False, name)]
        before = DMDLoss(guidance_scale=3.0).real_x0(FixedX0(x0_of), x, sigma, plain)
        assert torch.equal(real, before)
    teacher = FixedX0(x0_of)
    real = DMDLoss(guidance_scale=0.0, text_guidance_scale=4.0).real_x0(teacher, x, sigma, conds, NEGATIVE)
    assert teacher.calls == [(True, "text"), (True, "negative")]
    torch.testing.assert_close(real, cond + 4.0 * (cond - no_text))


def test_teacher_sampler_and_ode_trajectories_take_text_guidance():
    from lit_avatar.inference.options import PSBOptions, RolloutOptions
    from lit_avatar.modules.ode_init import teacher_trajectory
    from lit_avatar.modules.teacher_sampler import TeacherSampler

    x, _, audio, ref = _inputs()
    conds = ClipConditions(audio, ref, TEXT)
    sampler = TeacherSampler(steps=2, audio_guidance=4.0, ref_guidance=1.0, text_guidance=5.0)
    model = Conditioned()
    sampler.latents(model, conds, x, negative_text=NEGATIVE)
    assert len(model.calls) == 2 * 3 and model.calls[1] == (True, True, "negative")
    assert sampler.forwards_per_step == 2 and "text CFG 5" in sampler.describe()
    # checkpoints written before text guidance read back with it off
    old = {"sampler": {"steps": 3, "shift": 4.0, "audio_guidance": 2.5, "ref_guidance": 1.5}}
    assert TeacherSampler.from_hparams(old) == TeacherSampler(3, 4.0, 2.5, 1.5, text_guidance=1.0, negative_prompt=None)
    model = Conditioned()
    opts = RolloutOptions(frames_per_block=3, psb=PSBOptions(steps=[2]))
    teacher_trajectory(model, sampler.guidance, conds, x, opts, substeps=1, negative_text=NEGATIVE)
    assert len(model.calls) == 2 * 3 and model.calls[2] == (False, True, "negative")


def test_a_negative_prompt_needs_a_text_encoder_and_is_embedded_by_it(tiny_text_encoder, tmp_path):
    from lit_avatar.errors import UserError
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE
    from lit_avatar.modules.teacher import TeacherModule
    from lit_avatar.modules.teacher_sampler import TeacherSampler
    from lit_avatar.prompts import PromptEncoder

    sampler = TeacherSampler(steps=1, text_guidance=3.0, negative_prompt="closed mouth")
    make = lambda encoder: TeacherModule(  # noqa: E731
        model=AvatarDiT(config=get_preset("micro", audio_feature_dim=40)), vae=PatchVAE(2),
        audio_encoder=MelAudioEncoder(), text_encoder=encoder, sampler=sampler)
    with pytest.raises(UserError, match=r"^model.negative_prompt: needs model.text_encoder to embed it$"):
        make(None)
    encoder = PromptEncoder(str(tiny_text_encoder), max_length=8, cache_dir=str(tmp_path))
    teacher = make(encoder)
    from batches import random_batch

    batch = {**random_batch(frames=5), "txt": ["a woman smiling", "a man talking"]}
    video = teacher.sample(batch, generator=torch.Generator().manual_seed(0))
    assert video.shape == batch["video"].shape and encoder.encoded == 3  # two captions and the negative prompt


def test_distillation_stages_check_their_negative_prompt_and_pass_text_guidance_on(tiny_text_encoder, tmp_path):
    from lit_avatar.errors import UserError
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE
    from lit_avatar.modules.ode_init import ODEInitModule
    from lit_avatar.modules.self_forcing import SelfForcingModule
    from lit_avatar.prompts import PromptEncoder

    dit = lambda: AvatarDiT(config=get_preset("micro", audio_feature_dim=40))  # noqa: E731
    parts = dict(vae=PatchVAE(2), audio_encoder=MelAudioEncoder())
    for stage in (ODEInitModule, SelfForcingModule):
        with pytest.raises(UserError, match=r"^model.negative_prompt: needs model.text_encoder"):
            stage(dit(), dit(), negative_prompt="blurry", **parts)
    encoder = PromptEncoder(str(tiny_text_encoder), max_length=8, cache_dir=str(tmp_path))
    ode = ODEInitModule(dit(), dit(), text_guidance=5.0, negative_prompt="blurry", text_encoder=encoder, **parts)
    assert ode.guidance.text_scale == 5.0 and ode.prompt_embedding("blurry").shape == (1, 8, 16)
    sf = SelfForcingModule(dit(), dit(), text_guidance_scale=4.0, negative_prompt="blurry", text_encoder=encoder,
                           **parts)
    assert sf.dmd.text_guidance_scale == 4.0 and sf.hparams.negative_prompt == "blurry"
