"""Stage 1: the bidirectional audio-driven teacher, trained by flow matching (DESIGN.md "Training stages")."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lit_avatar.checkpoint import generator_record
from lit_avatar.diffusion import (
    SigmaSampler,
    add_noise,
    velocity_target,
)
from lit_avatar.errors import UserError
from lit_avatar.models.dit import AvatarDiT
from lit_avatar.models.vae import VideoVAE
from lit_avatar.modules.conditions import clip_conditions, clip_inputs, latent_frames, latents_of
from lit_avatar.modules.ema import EMASettings
from lit_avatar.modules.frozen import freeze
from lit_avatar.modules.losses import box_weight_map, weighted_mse
from lit_avatar.modules.optim import LinearWarmup, LRSchedulerCallable, OptimizerCallable, optimizer_config
from lit_avatar.modules.stage import TrainingStage, batch_size_of
from lit_avatar.modules.teacher_draws import ConditionDropout, MotionPrefix
from lit_avatar.modules.teacher_sampler import TeacherSampler
from lit_avatar.prompts import PromptEncoder
from lit_avatar.seeding import step_generator

VALIDATION_SAMPLER = TeacherSampler(steps=20)  # frozen: safe as defaults
TEACHER_EMA = EMASettings(decay=0.999)


class TeacherModule(TrainingStage):
    """Stage 1: flow-matching training of the bidirectional AvatarDiT teacher.

    Conditions (audio, reference, optional text) are dropped at random for CFG, an optional motion prefix
    is given noise-corrupted as in MCI, the loss is weighted in the mouth box, and an EMA copy samples.

    Args:
        model: the denoiser, an AvatarDiT (called as model(x, timestep, audio=, ref=, text=) -> velocity).
        vae: the frozen VideoVAE that maps `video`/`ref` to latents and samples back to pixels.
        audio_encoder: the frozen AudioEncoder (MelAudioEncoder, Wav2Vec2AudioEncoder) for raw `audio`;
            None when batches carry `audio_feats`.
        text_encoder: the PromptEncoder (umT5) that turns the batches' captions (`txt`) into `text`
            embeddings, each unique caption encoded once and cached; the checkpoint record names it. None:
            captions are ignored (batches with precomputed `text` still use it; others train on the null text).
        optimizer: builds the model's optimizer from its parameter groups (weight matrices, then biases and
            norms at weight decay 0); default AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.01.
        lr_scheduler: builds the schedule of that optimizer, stepped every optimizer step; default a linear
            warm-up over 100 steps (LinearWarmup); None keeps the learning rate constant.
        sigma_sampler: draws the training noise levels (distribution, shift, clamp); None: logit-normal
            (mean 0, scale 1) without shift. Give it the sampling schedule's shift.
        condition_dropout: which conditions a sample trains without, for CFG; None: audio and reference 0.1
            each, text 0.1 per batch, all at once 0.05.
        motion_prefix: which clips get their first latent frames as a motion prefix at a small noise level
            (Motion Condition Injection); None: no prefix.
        mouth_weight: loss weight inside the batch's `mouth_box` (1 elsewhere, mean-normalised); 1 = off.
            Without it lip sync barely emerges at small budgets (DESIGN.md).
        ema_settings: the weight EMA used for validation samples and the checkpoint record; None disables the
            EMA copy. Default: decay 0.999 from the first step.
        sampler: how validation samples are drawn (Euler steps, schedule shift, audio, reference and text CFG,
            negative prompt); the checkpoint stores its settings (`sampler`), from which `lit-avatar generate`
            and the demo sample the teacher. A negative prompt needs `text_encoder`.
        val_sample_batches: validation batches from which clips are sampled and logged (0 = none).
        val_max_samples: clips sampled per such batch.
        seed: seed of the validation noise, so samples at different steps are comparable.
    """

    frozen_parts = ("vae", "audio_encoder", "ema_model")
    trained, ema, sharded = "model", "ema_model", ("model", "ema_model")

    def __init__(
        self,
        model: AvatarDiT,
        vae: VideoVAE,
        audio_encoder: nn.Module | None = None,
        text_encoder: PromptEncoder | None = None,
        optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01),
        lr_scheduler: LRSchedulerCallable | None = lambda optimizer: LinearWarmup(optimizer, warmup_steps=100),
        sigma_sampler: SigmaSampler | None = None,
        condition_dropout: ConditionDropout | None = None,
        motion_prefix: MotionPrefix | None = None,
        mouth_weight: float = 5.0,
        ema_settings: EMASettings | None = TEACHER_EMA,
        sampler: TeacherSampler = VALIDATION_SAMPLER,
        val_sample_batches: int = 1,
        val_max_samples: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mouth_weight <= 0 or sampler.steps < 1:
            raise UserError("model: mouth_weight must be > 0 and sampler.steps >= 1")
        # callables stay out of hparams, which checkpoints store (loaded with weights_only=True); the config in
        # the checkpoint names them
        self.save_hyperparameters(ignore=["model", "vae", "audio_encoder", "text_encoder", "optimizer", "lr_scheduler",
                                          "sigma_sampler", "condition_dropout", "motion_prefix", "sampler",
                                          "ema_settings"])
        self.hparams.update(sampler.hparams())
        self.make_optimizer = optimizer
        self.make_lr_scheduler = lr_scheduler
        self.model = model
        self.vae = vae
        self.audio_encoder = audio_encoder
        freeze(vae, audio_encoder)
        self.init_text(text_encoder, model, sampler.negative_prompt)
        self.init_ema(ema_settings)
        self.sigma_sampler = sigma_sampler if sigma_sampler is not None else SigmaSampler("logit_normal")
        self.condition_dropout = condition_dropout if condition_dropout is not None else ConditionDropout()
        self.motion_prefix = motion_prefix if motion_prefix is not None else MotionPrefix()

    # ----- loss -----

    def flow_loss(
        self,
        batch: dict,
        net: nn.Module | None = None,
        generator: torch.Generator | None = None,
        dropout: bool = True,
        motion_prefix: bool = True,
    ) -> torch.Tensor:
        """The weighted flow-matching loss of `net` (default: the trained model) on a batch.

        Args:
            batch: the batch dict (DESIGN.md batch contract).
            net: the network to score; the critic of later stages reuses this loss with its own network.
            generator: CPU generator for reproducible noise levels, noise and dropout (validation).
            dropout: apply the CFG condition dropout.
            motion_prefix: apply the motion prefix (to its `prob` fraction of samples).
        """
        net = self.model if net is None else net
        x0, conds = clip_inputs(batch, self.vae, self.audio_encoder, self.text_encoder)
        b, _, t, h, w = x0.shape
        audio, ref, text = conds.audio, conds.ref, conds.text
        if dropout:
            audio, ref, text = self.condition_dropout(audio, ref, text, generator)
        sigma = self.sigma_sampler(b, generator=generator).to(x0.device)
        sigma_frames = sigma[:, None].expand(b, t).clone()
        frame_mask = torch.ones(b, t, device=x0.device)
        if motion_prefix:
            self.motion_prefix.apply(sigma_frames, frame_mask, generator)
        noise = (torch.randn(x0.shape, generator=generator).to(x0.device) if generator is not None
                 else torch.randn_like(x0))
        xs = add_noise(x0, noise, sigma_frames)
        v = net(xs, sigma_frames * 1000.0, audio=audio, ref=ref, text=text)
        weight = None
        if self.hparams.mouth_weight != 1.0 and "mouth_box" in batch:
            weight = box_weight_map(batch["mouth_box"], h, w, self.hparams.mouth_weight)
        return weighted_mse(v, velocity_target(x0, noise), weight, frame_mask)

    # ----- Lightning hooks -----

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.note_video_size(batch)
        loss = self.flow_loss(batch, generator=self._step_generator(batch_idx))
        b = batch_size_of(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        if self.trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=b)
        return loss

    def _step_generator(self, batch_idx: int) -> torch.Generator:
        """Draws of a training batch from (seed, step, rank, micro-batch): ranks differ, a resumed run
        repeats them, and accumulated micro-batches of one step differ."""
        if self._trainer is None:
            return step_generator(self.hparams.seed, 0)
        accumulate = max(int(self.trainer.accumulate_grad_batches), 1)
        return step_generator(self.hparams.seed, self.trainer.global_step, batch_idx % accumulate,
                              rank=int(self.trainer.global_rank))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
        loss = self.flow_loss(batch, net=self.sampling_model, generator=gen, dropout=False, motion_prefix=False)
        b = batch_size_of(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=b)
        if batch_idx < self.hparams.val_sample_batches and not self.trainer.sanity_checking:
            self._log_samples(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the generator record (docs/INTERFACES.md) so `lit-avatar generate` can rebuild the teacher."""
        try:
            checkpoint["lit_avatar"] = generator_record(
                "teacher", self.sampling_model, self.vae, self.audio_encoder, None, self.record_prefix,
                self._video_size, text_encoder=self.text_encoder
            )
        except TypeError as err:  # fail here, not later in `generate` with a checkpoint that has no record
            raise TypeError(f"teacher checkpoint: cannot write the generator record that `lit-avatar generate` "
                            f"and the distillation stages read ({err})") from err

    def configure_optimizers(self) -> dict:
        return optimizer_config(self.model, self.make_optimizer, self.make_lr_scheduler)

    # ----- sampling -----

    @torch.no_grad()
    def sample(
        self,
        batch: dict,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        progress: Any = None,
    ) -> torch.Tensor:
        """Generate clips for a batch's conditions (audio, reference, optional text): video [B,3,T,H,W].

        The clip's latent shape is that of the batch's `latents` or encoded `video`; the pixels themselves
        are not used.

        Args:
            batch: batch dict with `video` or `latents`, `audio` or `audio_feats`, `ref` or `ref_latent`.
            num_steps: Euler steps (default the sampler's), on its shifted schedule.
            generator: CPU generator for the starting noise.
            use_ema: sample with the EMA weights when there are any.
            progress: optional iterator wrapper (e.g. tqdm) for the steps.
        """
        net = self.sampling_model if use_ema else self.model
        if "latents" in batch:
            shape = tuple(batch["latents"].shape)
        else:
            shape = tuple(latents_of({"video": batch["video"][:, :, :1]}, self.vae).shape)
            shape = shape[:2] + (latent_frames(batch["video"].shape[2], self.vae),) + shape[3:]
        conds = clip_conditions(batch, self.vae, self.audio_encoder, shape[2], self.text_encoder)
        noise = torch.randn(shape, generator=generator).to(self.device)
        sampler = TeacherSampler.from_hparams(self.hparams, steps=num_steps)
        negative = self.prompt_embedding(sampler.negative_prompt)
        latents = sampler.latents(net, conds, noise, progress=progress, negative_text=negative)
        return self.vae.decode(latents).float().clamp(-1, 1)

    def _log_samples(self, batch: dict, batch_idx: int) -> None:
        """Sample clips with the EMA weights and log them with their SynthSync scores."""
        from lit_avatar.data.frames import to_uint8_frames
        from lit_avatar.modules.sample_logging import frame_grid, sync_figure, tensorboard_of, write_clips

        n = min(self.hparams.val_max_samples, batch_size_of(batch))
        sub = {k: (v[:n] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items() if k != "meta"}
        gen = torch.Generator().manual_seed(self.hparams.seed + 1000 + batch_idx)
        frames = to_uint8_frames(self.sample(sub, generator=gen))
        audio = sub["audio"].float().cpu().numpy() if "audio" in sub else None
        tb = tensorboard_of(self)
        step = self.global_step
        if tb is not None:
            tb.add_image(f"val/samples_{batch_idx}", frame_grid(frames), step)
        if audio is not None and "mouth_box" in sub:
            from eval.synthsync import audio_envelope, batch_synthsync, mouth_opening

            scores = batch_synthsync(frames, sub["mouth_box"].cpu().numpy(), audio)
            self.log("val/synthsync_r", scores["r"], batch_size=n)
            self.log("val/synthsync_r_shuffled", scores["r_shuffled"], batch_size=n)
            from lit_avatar.modules.sample_scores import log_appearance

            log_appearance(self, frames, sub, n)
            if tb is not None:
                box = sub["mouth_box"][0].tolist()
                opening = mouth_opening(frames[0], box)
                fig = sync_figure(opening, audio_envelope(audio[0], len(opening)), f"step {step}: r={scores['r']:.2f}")
                tb.add_figure(f"val/sync_{batch_idx}", fig, step)
        if self.trainer.is_global_zero and self.logger is not None and self.logger.log_dir:
            folder = os.path.join(self.logger.log_dir, "samples")
            write_clips(folder, f"step{step:06d}_b{batch_idx}", frames, audio)
