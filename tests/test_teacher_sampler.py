"""One teacher sampler: TeacherModule.sample and the demo's teacher check/comparison draw the same clip from the
settings the teacher's checkpoint stores (no second copy with its own shift or guidance)."""
import torch
from test_teacher import make_batch, make_teacher

from lit_avatar import pipeline
from lit_avatar.modules.conditions import clip_inputs
from lit_avatar.modules.teacher_sampler import TeacherSampler


def test_module_sample_and_the_checkpoint_sampler_agree(tmp_path):
    settings = TeacherSampler(steps=3, shift=4.0, audio_guidance=2.5, ref_guidance=1.5)
    teacher = make_teacher(sampler=settings, ema_settings=None)
    batch = make_batch(frames=5)
    video = teacher.sample(batch, generator=torch.Generator().manual_seed(1))
    ckpt = tmp_path / "teacher.ckpt"
    torch.save({"hyper_parameters": dict(teacher.hparams)}, ckpt)
    sampler = pipeline.teacher_sampler(ckpt)
    assert sampler == settings
    assert sampler.forwards_per_step == 3 and pipeline.teacher_sampler(ckpt, steps=7).steps == 7
    with torch.no_grad():
        x0, conds = clip_inputs(batch, teacher.vae, teacher.audio_encoder)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        again = teacher.vae.decode(sampler.latents(teacher.model, conds, noise)).float().clamp(-1, 1)
    torch.testing.assert_close(again, video)


def test_checkpoints_from_before_the_injected_sampler_still_name_theirs():
    flat = {"sample_steps": 3, "sample_shift": 4.0, "audio_guidance": 2.5, "ref_guidance": 1.5}
    assert TeacherSampler.from_hparams(flat) == TeacherSampler(steps=3, shift=4.0, audio_guidance=2.5, ref_guidance=1.5)
    assert TeacherSampler.from_hparams(flat, steps=7).steps == 7
