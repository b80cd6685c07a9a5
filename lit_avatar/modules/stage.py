"""What the three training stages share: the trained network and its EMA copy, gradient norms and
clipping, rank, sharding and the video size the checkpoint records (DESIGN.md "Training stages").

A stage names its networks by attribute (`trained`, `ema`, `sharded`) so that its checkpoint keys stay
those of its own module (`model.*`/`ema_model.*` for the teacher, `generator.*`/`generator_ema.*` for the
student), and holds only what is its own: its loss, its steps, its samples.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lit_avatar.checkpoint import video_size_of
from lit_avatar.errors import UserError
from lit_avatar.modules.ema import EMASettings, ema_decay_at, ema_update, make_ema_copy
from lit_avatar.modules.frozen import KeepsFrozenInEval
from lit_avatar.modules.sharding import global_grad_norm, shard_networks


def batch_size_of(batch: dict) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    return next(v for v in batch.values() if torch.is_tensor(v)).shape[0]


class TrainingStage(KeepsFrozenInEval, pl.LightningModule):
    """Base of the training stages.

    Subclasses set `trained` (attribute of the optimised network), `ema` (attribute of its EMA copy) and
    `sharded` (networks that become FSDP2 units), call `init_ema` after setting the trained network, and
    call `note_video_size` in their training step.
    """

    trained: str = "model"
    ema: str = "ema_model"
    sharded: tuple[str, ...] = ()

    def init_text(self, text_encoder: Any, model: nn.Module, negative_prompt: str | None = None) -> None:
        """Hold the PromptEncoder that turns batch captions into `text` (None: captions are not used); its
        width must be the model's `text_dim`, and a negative prompt needs it."""
        dim = getattr(getattr(model, "config", None), "text_dim", None)
        if text_encoder is not None and dim is not None and text_encoder.text_dim != dim:
            raise UserError(f"model.text_encoder: {text_encoder.path} gives {text_encoder.text_dim}-d embeddings, "
                            f"expected the model's text_dim {dim}")
        if negative_prompt is not None and text_encoder is None:
            raise UserError("model.negative_prompt: needs model.text_encoder to embed it")
        self.text_encoder = text_encoder

    def prompt_embedding(self, prompt: str | None) -> torch.Tensor | None:
        """[1, L, text_dim] embedding of one prompt (the negative prompt) on this module's device; None for None."""
        if prompt is None or self.text_encoder is None:
            return None
        return self.text_encoder([prompt], device=self.device)

    def init_ema(self, settings: EMASettings | None) -> None:
        """The frozen EMA copy of the trained network (None without settings)."""
        self.ema_settings = settings
        setattr(self, self.ema, make_ema_copy(getattr(self, self.trained)) if settings is not None else None)
        self._last_ema_step = -1
        self._video_size: tuple[int, int] | None = None

    @property
    def sampling_model(self) -> nn.Module:
        """The weights used for samples: the EMA copy when there is one."""
        ema = getattr(self, self.ema)
        return ema if ema is not None else getattr(self, self.trained)

    @property
    def record_prefix(self) -> str:
        """State-dict prefix of the weights the checkpoint's generator record points at."""
        return (self.ema if getattr(self, self.ema) is not None else self.trained) + "."

    def update_ema(self, step: int) -> None:
        """Average the trained weights into the EMA copy once per optimizer step `step`."""
        ema = getattr(self, self.ema)
        if ema is None or step == self._last_ema_step:
            return  # no EMA, or no optimizer step happened (gradient accumulation)
        self._last_ema_step = step
        ema_update(ema, getattr(self, self.trained), ema_decay_at(step, self.ema_settings.decay,
                                                                  self.ema_settings.start_step))

    def note_video_size(self, batch: dict) -> None:
        """Remember the training video size for the checkpoint's generator record."""
        self._video_size = video_size_of(batch) or self._video_size

    def rank(self) -> int:
        return int(self.trainer.global_rank) if self._trainer is not None else 0

    def network_of(self, optimizer: torch.optim.Optimizer) -> tuple[str, str]:
        """(attribute of the network `optimizer` steps, key of its logged gradient norm)."""
        return self.trained, "train/grad_norm"

    # ----- Lightning hooks -----

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the norm of the full gradient (reduced over shards) and, with a `grad_clip` option, clip by it
        through the precision plugin (DTensor-aware under FSDP2, the same scale on every rank)."""
        name, key = self.network_of(optimizer)
        norm = global_grad_norm(getattr(self, name).parameters())
        if norm is None:
            return
        self.log(key, norm)
        clip = self.hparams.get("grad_clip")
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        if self.automatic_optimization:  # manual stages update the EMA where they step the optimizer
            self.update_ema(self.trainer.global_step)

    def configure_model(self) -> None:
        """Under ModelParallelStrategy: FSDP2 units per block of each network in `sharded`."""
        shard_networks(self, self.sharded)
