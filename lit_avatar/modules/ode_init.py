"""Stage 2: ODE initialisation of the causal student (CausVid; DESIGN.md "Training stages").

The bidirectional teacher integrates its probability-flow ODE with many Euler steps and CFG; the states it
passes at the student's noise levels (the rollout's PSB schedule) and its clean end form a trajectory.
The student, in block-causal mode with per-frame timesteps, learns to jump from any of those states to
the clean end, so DMD starts from a generator that already denoises in few steps. It attends exactly as the
rollout does at inference: the reference sink plus the last `window` context frames, at the MCI level.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn

from lit_avatar.checkpoint import generator_record
from lit_avatar.data.atomic import atomic_path
from lit_avatar.diffusion import (
    AvatarGuidance,
    psb_level_indices,
    psb_levels,
    sample_euler,
    shifted_schedule,
    to_timestep,
    x0_from_velocity,
)
from lit_avatar.errors import UserError
from lit_avatar.inference.options import RolloutOptions
from lit_avatar.models.dit import ClipConditions
from lit_avatar.modules.conditions import clip_inputs
from lit_avatar.modules.distillation import DistillationStage
from lit_avatar.modules.losses import box_weight_map, weighted_mse
from lit_avatar.modules.optim import LinearWarmup, LRSchedulerCallable, OptimizerCallable, optimizer_config
from lit_avatar.modules.stage import batch_size_of
from lit_avatar.seeding import step_generator


@torch.no_grad()
def teacher_trajectory(teacher: nn.Module, guidance: AvatarGuidance, conds: ClipConditions, noise: torch.Tensor,
                       options: RolloutOptions, substeps: int,
                       negative_text: torch.Tensor | None = None) -> torch.Tensor:
    """States of the teacher's Euler ODE at the student's levels: [K+1, B,C,t,h,w], last = clean end.

    The fine schedule has K * substeps steps, K = max(psb.steps); because both come from the same
    shifted linear grid, its every `substeps`-th level is exactly the student's level, so each segment
    is one call of the shared Euler sampler. `negative_text` is the negative prompt's embedding for text guidance.
    """
    k = max(options.psb.steps)
    fine = shifted_schedule(k * substeps, options.shift)
    denoiser = guidance.denoiser(teacher, conds.audio, conds.ref, conds.text, negative_text)
    states, x = [noise], noise
    for j in range(k):
        x = sample_euler(denoiser, x, fine[j * substeps:(j + 1) * substeps + 1])
        states.append(x)
    return torch.stack(states)


class TrajectoryCache:
    """Trajectories on disk, one .pt file per sample, keyed by the sample key and its conditions.

    The key includes a hash of the audio features and reference, so a clip cut at another start (training
    draws random starts) never reuses another clip's trajectory.

    Args:
        folder: where the files live (created by the first save, so building a module writes nothing).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @staticmethod
    def key(sample_key: str, conds: ClipConditions, index: int, shape: tuple[int, ...]) -> str:
        h = hashlib.sha1(str(tuple(shape)).encode())
        for t in (conds.audio, conds.ref, conds.text):
            if t is not None:
                h.update(t[index].detach().float().cpu().numpy().tobytes())
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_key)
        return f"{safe}-{h.hexdigest()[:16]}"

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key + ".pt")

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        return torch.load(path, weights_only=True) if os.path.isfile(path) else None

    def save(self, key: str, trajectory: torch.Tensor) -> None:
        os.makedirs(self.folder, exist_ok=True)
        with atomic_path(self.path(key)) as tmp:
            torch.save(trajectory.detach().cpu().clone(), tmp)


class ODEInitModule(DistillationStage):
    """Regression of the causal student onto teacher ODE trajectories.

    The rollout's block size, shift and PSB step lists fix the student's levels. Without `generator_weights`
    the student starts from `teacher_weights`: the same function, so it only learns causality and few-step
    jumps. The student's seed draws the trajectories' starting noise and the levels in validation.

    Args:
        generator: the causal student (AvatarDiT); trained in block-causal mode.
        teacher: the bidirectional teacher, frozen.
        teacher_substeps: Euler steps of the teacher between two student levels (more = closer to the ODE).
        audio_guidance: teacher CFG scale of audio over reference(+text).
        ref_guidance: teacher CFG scale of reference(+text) over nothing.
        text_guidance: teacher CFG scale of the clip's text over the negative prompt (InfiniteTalk's text guide
            scale, outermost); 1 adds no pass and keeps text with the reference. Only clips with text.
        negative_prompt: replaces the text where text guidance drops it; needs text_encoder. None: null text.
        cache_dir: folder of cached trajectories (one .pt per sample); None samples them on the fly.
        optimizer: builds the student's optimizer from its parameter groups (weight matrices, then biases and
            norms at weight decay 0); default AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.01.
        lr_scheduler: builds the schedule of that optimizer, stepped every optimizer step; default a linear
            warm-up over 20 steps (LinearWarmup); None keeps the learning rate constant.
        **kwargs: the DistillationStage's (rollout, vae, audio_encoder, text_encoder, teacher_weights,
            generator_weights, weights_prefix, mouth_weight, ema_settings, seed).
    """

    sharded = ("generator", "generator_ema", "teacher")
    not_hparams = ("optimizer", "lr_scheduler")
    generator_starts_from_teacher = True

    def __init__(
        self,
        generator: nn.Module,
        teacher: nn.Module,
        teacher_substeps: int = 4,
        audio_guidance: float = 2.0,
        ref_guidance: float = 1.0,
        text_guidance: float = 1.0,
        negative_prompt: str | None = None,
        cache_dir: str | None = None,
        optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01),
        lr_scheduler: LRSchedulerCallable | None = lambda optimizer: LinearWarmup(optimizer, warmup_steps=20),
        **kwargs: Any,
    ) -> None:
        if teacher_substeps < 1:
            raise UserError(f"model.teacher_substeps={teacher_substeps}: expected >= 1")
        super().__init__(generator, teacher, **kwargs)
        self.make_optimizer = optimizer
        self.make_lr_scheduler = lr_scheduler
        self.init_text(self.text_encoder, generator, negative_prompt)
        self.guidance = AvatarGuidance(audio_scale=audio_guidance, ref_scale=ref_guidance, text_scale=text_guidance)
        self.cache = TrajectoryCache(cache_dir) if cache_dir else None

    # ----- trajectories -----

    def trajectories(self, batch: dict, x_shape: tuple[int, ...], conds: ClipConditions) -> torch.Tensor:
        """[K+1, B,C,t,h,w] for the batch, from the cache when present, else sampled (and stored)."""
        b = x_shape[0]
        keys = None
        if self.cache is not None:
            names = (batch.get("meta") or {}).get("key") or [str(i) for i in range(b)]
            keys = [TrajectoryCache.key(names[i], conds, i, x_shape[1:]) for i in range(b)]
            found = [self.cache.load(k) for k in keys]
            if all(f is not None for f in found):
                return torch.stack(found, dim=1).to(self.device)
        gen = step_generator(self.hparams.seed, int(self.global_step), stream=1, rank=self.rank())
        noise = torch.randn(tuple(x_shape), generator=gen).to(self.device)
        traj = teacher_trajectory(self.teacher, self.guidance, conds, noise, self.rollout_options,
                                  self.hparams.teacher_substeps, self.prompt_embedding(self.hparams.negative_prompt))
        if keys is not None:
            for i, key in enumerate(keys):
                self.cache.save(key, traj[:, i])
        return traj

    def draw_levels(self, b: int, num_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per sample and block, an index into the shared levels that the block's PSB list visits before its
        clean end: [B, t] per-frame indices. The context every block reads is the teacher-forced copy
        (`context_inputs`), so no block has to be drawn clean to stand for context."""
        opts = self.rollout_options
        fpb = opts.frames_per_block
        num_blocks = -(-num_frames // fpb)
        idx = torch.empty(b, num_blocks, dtype=torch.long)
        for i in range(num_blocks):
            # the block's noisy PSB levels (its clean end, last, is the target)
            visited = torch.tensor(psb_level_indices(opts.psb.steps, opts.psb.steps_for(i))[:-1])
            idx[:, i] = visited[torch.randint(len(visited), (b,), generator=generator)]
        return idx.repeat_interleave(fpb, dim=1)[:, :num_frames]

    def context_inputs(self, clean: torch.Tensor,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip as the rollout's cache holds it: with MCI, the clean end corrupted to a level s_m drawn
        per block from [mci.min, mci.max] (as self-forcing trains); without MCI, clean at s = 0.
        Returns (context [B,C,t,h,w], per-frame levels [B, t])."""
        opts = self.rollout_options
        b, _, t = clean.shape[:3]
        if not opts.mci.enabled:
            return clean, torch.zeros(b, t, device=clean.device)
        num_blocks = -(-t // opts.frames_per_block)
        s_m = opts.mci.min + (opts.mci.max - opts.mci.min) * torch.rand(b, num_blocks, generator=generator)
        s_m = s_m.repeat_interleave(opts.frames_per_block, dim=1)[:, :t].to(clean.device)
        noise = torch.randn(tuple(clean.shape), generator=generator).to(clean)
        s = s_m[:, None, :, None, None]
        return (1 - s) * clean + s * noise, s_m

    def regression_loss(self, batch: dict, generator: torch.Generator | None = None,
                        net: nn.Module | None = None) -> torch.Tensor:
        """MSE between the student's x0 and the trajectory's clean end. Each block starts from the trajectory
        at its drawn level and attends to the reference sink and the rollout's `window` context frames, taken
        from the context copy at the level the cache holds them (teacher forcing with the inference window)."""
        net = self.generator if net is None else net
        opts = self.rollout_options
        x0, conds = clip_inputs(batch, self.vae, self.audio_encoder, self.text_encoder)
        traj = self.trajectories(batch, tuple(x0.shape), conds)
        b, _, t, h, w = x0.shape
        levels = psb_levels(opts.psb.steps, opts.shift).to(self.device)
        idx = self.draw_levels(b, t, generator).to(self.device)  # [B, t]
        frames = torch.arange(t, device=self.device)
        states = traj.permute(1, 3, 0, 2, 4, 5)  # [B, t, K+1, C, h, w]
        xs = states[torch.arange(b, device=self.device)[:, None], frames[None, :], idx]  # [B, t, C, h, w]
        xs = xs.permute(0, 2, 1, 3, 4)
        sigma = levels[idx]  # [B, t]
        ctx_x, ctx_sigma = self.context_inputs(traj[-1], generator)
        v = net(xs, to_timestep(sigma), frames_per_block=opts.frames_per_block, window=opts.window,
                context=ctx_x, context_timestep=to_timestep(ctx_sigma), **conds.as_kwargs())
        pred = x0_from_velocity(xs, v, sigma)
        weight = None
        if self.hparams.mouth_weight != 1.0 and "mouth_box" in batch:
            weight = box_weight_map(batch["mouth_box"], h, w, self.hparams.mouth_weight)
        return weighted_mse(pred, traj[-1], weight)

    # ----- Lightning hooks -----

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        gen = step_generator(self.hparams.seed, int(self.global_step), stream=0, rank=self.rank())
        loss = self.regression_loss(batch, gen)
        self.note_video_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size_of(batch))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
        loss = self.regression_loss(batch, gen, net=self.sampling_model)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size_of(batch))

    def configure_optimizers(self) -> dict:
        return optimizer_config(self.generator, self.make_optimizer, self.make_lr_scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_avatar"] = generator_record("ode_init", self.generator, self.vae, self.audio_encoder,
                                                    self.rollout_options, self.record_prefix, self._video_size,
                                                    text_encoder=self.text_encoder)
