"""What the two distillation stages (ODE init, Self-Forcing DMD) share: the causal student they train, the
frozen bidirectional teacher, the rollout options, the frozen VAE and audio encoder, the earlier stages'
weights, the mouth weight of the loss, the student's EMA and the seed (DESIGN.md "Training stages").

A stage passes what it does not take itself on with `**kwargs`; LightningCLI (jsonargparse) follows that
call, so a config still names every parameter under `model.init_args`.
"""
from __future__ import annotations

from torch import nn

from lit_avatar.checkpoint import load_stage_weights
from lit_avatar.errors import UserError
from lit_avatar.inference.options import RolloutOptions
from lit_avatar.modules.ema import EMASettings
from lit_avatar.modules.frozen import freeze
from lit_avatar.modules.stage import TrainingStage
from lit_avatar.prompts import PromptEncoder

# built objects: checkpoints store hparams loaded with weights_only=True, the config in the checkpoint names them
_BUILT = ("generator", "teacher", "rollout", "vae", "audio_encoder", "text_encoder", "ema_settings")
STUDENT_EMA = EMASettings(decay=0.99)  # frozen: safe as a default


class DistillationStage(TrainingStage):
    """Base of the distillation stages.

    Args:
        generator: the causal student (AvatarDiT); trained in block-causal mode.
        teacher: the bidirectional teacher (AvatarDiT), frozen.
        rollout: the student's rollout options (block size, shift, PSB step lists), the same as at inference.
        vae: the frozen VideoVAE (batches with `video`).
        audio_encoder: the frozen AudioEncoder (batches with raw `audio`); None when batches carry `audio_feats`.
        text_encoder: the PromptEncoder (umT5) that turns the batches' captions (`txt`) into `text` embeddings,
            each unique caption encoded once and cached; the checkpoint record names it. None: captions are
            ignored (precomputed `text` is still used; other batches go with the null text).
        teacher_weights: stage-1 checkpoint loaded into the teacher.
        generator_weights: checkpoint loaded into the student (the ODE-init stage's, or the teacher's).
        weights_prefix: state-dict prefix in those checkpoints; default: each checkpoint's record/EMA.
        mouth_weight: loss weight inside the batch's `mouth_box` (1 elsewhere); 1 = off.
        ema_settings: the student's weight EMA; None disables it. Default: decay 0.99 from the first step.
        seed: seed of every random draw of the stage (combined with the step and rank).
    """

    trained, ema = "generator", "generator_ema"
    frozen_parts = ("teacher", "vae", "audio_encoder", "generator_ema")
    not_hparams: tuple[str, ...] = ()  # a stage's own built objects and callables
    generator_starts_from_teacher = False  # without generator_weights, load teacher_weights into the student

    def __init__(
        self,
        generator: nn.Module,
        teacher: nn.Module,
        rollout: RolloutOptions | None = None,
        vae: nn.Module | None = None,
        audio_encoder: nn.Module | None = None,
        text_encoder: PromptEncoder | None = None,
        teacher_weights: str | None = None,
        generator_weights: str | None = None,
        weights_prefix: str | None = None,
        mouth_weight: float = 5.0,
        ema_settings: EMASettings | None = STUDENT_EMA,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if vae is None:
            raise UserError("model.vae: a VideoVAE is required (PatchVAE for CPU runs)")
        # collects the subclass's arguments too (Lightning reads every __init__ frame of the chain)
        self.save_hyperparameters(ignore=[*_BUILT, *self.not_hparams])
        self.rollout_options = rollout if rollout is not None else RolloutOptions()
        if self.generator_starts_from_teacher and generator_weights is None:
            generator_weights = teacher_weights
        if teacher_weights is not None:
            load_stage_weights(teacher, teacher_weights, weights_prefix)
        if generator_weights is not None:
            load_stage_weights(generator, generator_weights, weights_prefix)
        self.generator, self.teacher, self.vae, self.audio_encoder = generator, teacher, vae, audio_encoder
        freeze(teacher, vae, audio_encoder)
        self.init_text(text_encoder, generator)
        self.init_ema(ema_settings)
