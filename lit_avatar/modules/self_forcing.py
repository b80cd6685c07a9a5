"""Stage 3: Self-Forcing DMD distillation of the causal student (DESIGN.md "Training stages").

The generator rolls out through the shared rollout exactly as at inference (PSB, MCI, URCR); one exit step
per block carries the gradient. The DMD loss compares the frozen teacher (real score, CFG) with the critic
(fake score), which is trained by flow matching on detached generator samples, `critic_steps` critic
updates per generator update. On a generator step the critic then trains on a fresh no-grad rollout of the
updated generator (Self-Forcing); `critic_sample="reuse"` trains it on the generator's own pre-update sample.

Optimisation is manual. Every training step updates the critic once, through Lightning's optimizer
wrapper, so `trainer.global_step` counts critic updates (one per batch); every `critic_steps`-th step
first updates the generator (stepped through the strategy's precision plugin, not counted as a step).
All random draws of a step derive from (seed, global_step, rank), so ranks draw different noise and a
resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn

from lit_avatar.causal_grid import CausalGrid
from lit_avatar.checkpoint import generator_record, load_stage_weights
from lit_avatar.diffusion import SigmaSampler
from lit_avatar.errors import UserError
from lit_avatar.inference.clip_rollout import block_step_counts, rollout_clip
from lit_avatar.models.dit import ClipConditions
from lit_avatar.modules.conditions import clip_inputs
from lit_avatar.modules.critic import critic_flow_loss, critic_from_teacher
from lit_avatar.modules.distillation import DistillationStage
from lit_avatar.modules.dmd import DMDLoss
from lit_avatar.modules.ema import EMASettings
from lit_avatar.modules.losses import box_weight_map
from lit_avatar.modules.optim import (
    LRSchedulerCallable,
    OptimizerCallable,
    dmd_critic_adamw,
    dmd_generator_adamw,
    optimizer_config,
)
from lit_avatar.modules.stage import batch_size_of
from lit_avatar.seeding import step_generator


def draw_exit_steps(step_counts: list[int], same_for_all_blocks: bool, generator: torch.Generator) -> list[int]:
    """One exit step per block, uniform over that block's steps.

    With `same_for_all_blocks` one uniform u in [0, 1) is shared and block i exits at floor(u * n_i), so
    blocks with equal step counts exit at the same index (Self-Forcing's option) and PSB blocks with more
    steps still exit uniformly over their own list.
    """
    if same_for_all_blocks:
        u = torch.rand((), generator=generator).item()
        return [min(int(u * n), n - 1) for n in step_counts]
    return [int(torch.randint(n, (), generator=generator)) for n in step_counts]


def _no_closure() -> None:
    """The generator's backward already ran (manual optimisation); the optimizer's closure has nothing to do."""


SELF_FORCING_EMA = EMASettings(decay=0.99, start_step=200)  # frozen: safe as a default
FRESH_SAMPLE_STEP = 10**12  # draws of the critic's fresh rollout: those of a step number training never reaches


class SelfForcingModule(DistillationStage):
    """Self-Forcing with DMD.

    The rollout is the block loop's, the same as at inference (ablations switch it); `teacher_weights` load
    into the teacher and the critic, `generator_weights` (the ODE-init stage's) into the generator; the
    mouth weight weighs the critic's flow loss.

    Args:
        generator: the causal student (AvatarDiT), trained.
        teacher: the bidirectional teacher (AvatarDiT), frozen: the real score.
        critic: the bidirectional fake score, trained; None: a copy of the teacher (after its weights load).
        generator_optimizer: builds the generator's optimizer from its parameter groups (weight matrices, then
            biases and norms at weight decay 0); default AdamW, lr 2e-6, betas (0, 0.999), weight decay 0.01
            (REFERENCE.md at scale).
        critic_optimizer: builds the critic's optimizer likewise; default AdamW, lr 4e-7, betas (0, 0.999),
            weight decay 0.01: no momentum, the critic's target moves every step.
        generator_lr_scheduler: builds the generator optimizer's schedule, stepped every generator update;
            None (default) keeps its learning rate constant.
        critic_lr_scheduler: builds the critic optimizer's schedule, stepped every critic update (each
            training step); None (default) keeps its learning rate constant.
        grad_clip: gradient norm clip of both networks (10); 0 disables.
        critic_steps: critic updates per generator update (5).
        critic_sample: what the critic trains on after a generator update: "fresh" (Self-Forcing) rolls the
            updated generator out again with new noise and exit steps, without gradient; "reuse" takes the
            generator's pre-update sample of the same noise, saving one rollout per generator update, but
            the critic then fits samples of a generator that no longer exists and that DMD has just scored.
            (Self-Forcing's fresh rollout is also on the next batch; here it reuses this batch's conditions.)
        guidance_scale: CFG g of the real score, pred = cond + g (cond - uncond).
        uncond_drops_ref: the unconditional teacher pass also zeroes the reference.
        text_guidance_scale: text CFG g_t of the real score for clips with text (captions): pred = cond
            + g_t (cond - no_text) + g (no_text - uncond), the text dropped to the negative prompt in no_text
            and uncond (InfiniteTalk's split; its scales are 1 + g); 0 (default) adds no teacher pass.
        negative_prompt: the prompt that replaces the text in those passes; needs text_encoder. None: null text.
        dmd_shift: shift of the uniform draw of the scoring level (5).
        min_timestep: lower clamp of the scoring timestep (20).
        max_timestep: upper clamp of the scoring timestep (980).
        same_exit_step: one exit draw shared by all blocks of a rollout, or one per block.
        ema_settings: the generator's weight EMA (None disables it); its start step counts iterations (critic
            updates, `trainer.global_step`), as Self-Forcing does: 200 of 3,000 with 5 critic updates per
            generator update averages 560 of the 600 generator updates. Default: decay 0.99 from iteration 200.
        val_max_samples: validation clips generated per batch for SynthSync and the logged samples.
        val_sample_batches: validation batches whose samples are logged as images/mp4.
        **kwargs: the DistillationStage's (rollout, vae, audio_encoder, text_encoder, teacher_weights,
            generator_weights, weights_prefix, mouth_weight, seed).
    """

    sharded = ("generator", "generator_ema", "critic", "teacher")
    not_hparams = ("critic", "generator_optimizer", "critic_optimizer", "generator_lr_scheduler",
                   "critic_lr_scheduler")

    def __init__(
        self,
        generator: nn.Module,
        teacher: nn.Module,
        critic: nn.Module | None = None,
        generator_optimizer: OptimizerCallable = dmd_generator_adamw,
        critic_optimizer: OptimizerCallable = dmd_critic_adamw,
        generator_lr_scheduler: LRSchedulerCallable | None = None,
        critic_lr_scheduler: LRSchedulerCallable | None = None,
        grad_clip: float = 10.0,
        critic_steps: int = 5,
        critic_sample: Literal["fresh", "reuse"] = "fresh",
        guidance_scale: float = 3.0,
        uncond_drops_ref: bool = False,
        text_guidance_scale: float = 0.0,
        negative_prompt: str | None = None,
        dmd_shift: float = 5.0,
        min_timestep: float = 20.0,
        max_timestep: float = 980.0,
        same_exit_step: bool = True,
        ema_settings: EMASettings | None = SELF_FORCING_EMA,
        val_max_samples: int = 4,
        val_sample_batches: int = 1,
        **kwargs: Any,
    ) -> None:
        if critic_steps < 1:
            raise UserError(f"model.critic_steps: expected >= 1, got {critic_steps}")
        if critic_sample not in ("fresh", "reuse"):
            raise UserError(f"model.critic_sample: expected 'fresh' or 'reuse', got {critic_sample!r}")
        super().__init__(generator, teacher, ema_settings=ema_settings, **kwargs)
        self.optimizer_builders = {"generator": (generator_optimizer, generator_lr_scheduler),
                                "critic": (critic_optimizer, critic_lr_scheduler)}
        self.critic = critic if critic is not None else critic_from_teacher(teacher)
        if critic is not None and self.hparams.teacher_weights is not None:
            load_stage_weights(self.critic, self.hparams.teacher_weights, self.hparams.weights_prefix)
        self.init_text(self.text_encoder, generator, negative_prompt)
        self.dmd = DMDLoss(guidance_scale, dmd_shift, min_timestep, max_timestep, uncond_drops_ref,
                           text_guidance_scale)
        self.critic_sigmas = SigmaSampler("uniform", shift=dmd_shift, min_sigma=min_timestep / 1000.0,
                                          max_sigma=max_timestep / 1000.0)
        self.automatic_optimization = False
        # The generator's text path (text embedding, cross-attention K/V) runs once per rollout without
        # gradient, so AdamW never creates state for it; a sharded resume must accept those absent states.
        self.strict_loading = False
        self.generator_updates = 0

    @property
    def grid(self) -> CausalGrid:
        """Where the generator's blocks fall in video frames."""
        return CausalGrid(self.rollout_options.frames_per_block, int(getattr(self.vae, "temporal_factor", 1)))

    # ----- pieces -----

    def generate(self, x_shape: tuple[int, ...], conds: ClipConditions, step: int, train: bool,
                 model: nn.Module | None = None) -> torch.Tensor:
        """Roll the generator out over a clip of latent shape `x_shape`; with `train`, with exit steps."""
        fpb = self.rollout_options.frames_per_block
        num_blocks = -(-x_shape[2] // fpb)
        exits = None
        if train:
            shared = step_generator(self.hparams.seed, step, stream=0)  # same on every rank
            counts = block_step_counts(self.rollout_options, num_blocks)
            exits = draw_exit_steps(counts, self.hparams.same_exit_step, shared)
        noise_gen = step_generator(self.hparams.seed, step, stream=1, rank=self.rank())
        x, _ = rollout_clip(model or self.generator, self.rollout_options, conds, tuple(x_shape), exits, noise_gen,
                            training=train)
        self._last_exit_steps = exits
        return x

    def _spatial_weight(self, batch: dict, x: torch.Tensor) -> torch.Tensor | None:
        if self.hparams.mouth_weight == 1.0 or "mouth_box" not in batch:
            return None
        return box_weight_map(batch["mouth_box"], x.shape[-2], x.shape[-1], self.hparams.mouth_weight)

    def network_of(self, optimizer: torch.optim.Optimizer) -> tuple[str, str]:
        """Both networks are stepped, the generator's optimizer first (`configure_optimizers`); the base's
        gradient hook (called by the precision plugin before either steps) logs and clips each."""
        name = "generator" if optimizer is self.trainer.optimizers[0] else "critic"
        return name, f"train/{name}_grad_norm"

    # ----- Lightning hooks -----

    def training_step(self, batch: dict, batch_idx: int) -> None:
        gen_opt, critic_opt = self.optimizers()
        step = self.global_step
        x0, conds = clip_inputs(batch, self.vae, self.audio_encoder, self.text_encoder)
        self.note_video_size(batch)
        b = x0.shape[0]
        rank = self.rank()
        if step % self.hparams.critic_steps == 0:
            x = self.generate(x0.shape, conds, step, train=True)
            out = self.dmd(x, self.teacher, self.critic, conds, step_generator(self.hparams.seed, step, 100, rank),
                           self.prompt_embedding(self.hparams.negative_prompt))
            gen_opt.zero_grad(set_to_none=True)
            self.manual_backward(out.loss)
            # Through the strategy and its precision plugin (gradient scaler; on_before_optimizer_step, which
            # clips by the global norm) exactly as the Lightning wrapper's step does, minus the wrapper's
            # step count: global_step stays one per batch (one critic update).
            self.trainer.strategy.optimizer_step(gen_opt.optimizer, closure=_no_closure)
            self._step_lr_scheduler(gen_opt.optimizer)
            self.generator_updates += 1
            self.update_ema(step)  # counted in iterations (critic updates), as Self-Forcing does
            self.log("train/generator_loss", out.loss.detach(), prog_bar=True, batch_size=b)
            self.log("train/dmd_grad_norm", out.grad.norm(), batch_size=b)
            self.log("train/dmd_sigma", out.sigma.mean(), batch_size=b)
            if self.hparams.critic_sample == "reuse":
                samples = x.detach()
            else:
                with torch.no_grad():
                    samples = self.generate(x0.shape, conds, FRESH_SAMPLE_STEP + step, train=True)
        else:
            with torch.no_grad():
                samples = self.generate(x0.shape, conds, step, train=True)
        loss = critic_flow_loss(self.critic, samples, conds, self.critic_sigmas,
                                step_generator(self.hparams.seed, step, 200, rank), self._spatial_weight(batch, x0))
        critic_opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        critic_opt.step()
        self._step_lr_scheduler(critic_opt.optimizer)
        self.log("train/critic_loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log("train/generator_updates", float(self.generator_updates), batch_size=b)

    def configure_optimizers(self) -> tuple[dict, dict]:
        """The generator's optimizer first, then the critic's (training_step and the gradient hook rely on it)."""
        configs = []
        for name in ("generator", "critic"):
            make_optimizer, make_lr_scheduler = self.optimizer_builders[name]
            config = optimizer_config(getattr(self, name), make_optimizer, make_lr_scheduler)
            scheduler = config.get("lr_scheduler", {}).get("scheduler")
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                raise UserError(f"model.{name}_lr_scheduler: ReduceLROnPlateau needs a monitored metric; the "
                                "manually optimised DMD steps its schedules per update (use a step schedule)")
            configs.append(config)
        return tuple(configs)

    def _step_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> None:
        """Manual optimisation: Lightning leaves the schedules to the module; step the one of `optimizer`."""
        for config in self.trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                config.scheduler.step()

    @torch.no_grad()
    def sample(self, batch: dict, step: int = 0, use_ema: bool = True) -> torch.Tensor:
        """Inference-mode rollout (mci.sigma, all steps) for a batch's conditions: video [B,3,T,H,W]."""
        x0, conds = clip_inputs(batch, self.vae, self.audio_encoder, self.text_encoder)
        model = self.sampling_model if use_ema else self.generator
        latents = self.generate(x0.shape, conds, step, train=False, model=model)
        return self.vae.decode(latents).float().clamp(-1, 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        from eval.stream_scores import seam_flicker
        from lit_avatar.data.frames import to_uint8_frames
        from lit_avatar.modules.sample_logging import frame_grid, tensorboard_of, write_clips

        n = min(self.hparams.val_max_samples, batch_size_of(batch))
        sub = {k: (v[:n] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items() if k != "meta"}
        video = self.sample(sub, step=10_000_000 + batch_idx)  # fixed noise: samples comparable across steps
        frames = to_uint8_frames(video)
        flicker = seam_flicker(frames, self.grid)  # the scoring the ablations use, seams on the causal grid
        self.log("val/boundary_flicker_ratio", flicker["flicker_ratio"], batch_size=n)
        if "audio" in sub and "mouth_box" in sub:
            from eval.synthsync import batch_synthsync

            scores = batch_synthsync(frames, sub["mouth_box"].cpu().numpy(), sub["audio"].float().cpu().numpy())
            self.log("val/synthsync_r", scores["r"], batch_size=n)
            self.log("val/synthsync_r_shuffled", scores["r_shuffled"], batch_size=n)
            from lit_avatar.modules.sample_scores import log_appearance

            log_appearance(self, frames, sub, n)
        if batch_idx < self.hparams.val_sample_batches and not self.trainer.sanity_checking:
            tb = tensorboard_of(self)
            if tb is not None:
                tb.add_image(f"val/samples_{batch_idx}", frame_grid(frames), self.global_step)
            if self.trainer.is_global_zero and self.logger is not None and self.logger.log_dir:
                audio = sub["audio"].float().cpu().numpy() if "audio" in sub else None
                write_clips(os.path.join(self.logger.log_dir, "samples"), f"step{self.global_step:06d}_b{batch_idx}",
                            frames, audio)

    # ----- checkpoints -----

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_avatar"] = generator_record("student", self.generator, self.vae, self.audio_encoder,
                                                    self.rollout_options, self.record_prefix, self._video_size,
                                                    text_encoder=self.text_encoder)
        checkpoint["generator_updates"] = self.generator_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.generator_updates = int(checkpoint.get("generator_updates", 0))
