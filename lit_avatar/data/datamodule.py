"""AvatarDataModule: the one loader of talking-head clips for every training stage.

Reads webdataset shards written in `lit_avatar.data.schema` (SynthTalk or built from real videos) and
yields the batch contract of docs/INTERFACES.md. Shards are split by node and by DataLoader worker;
workers beyond the number of shards a node holds are not started (they would only idle).
The training loader is resumable: Lightning checkpoints its position (epoch + shards finished in it, see
`lit_avatar.data.stream.EpochLoader`) and a resumed run skips the finished shards.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl

from lit_avatar.data.shards import expand_shards
from lit_avatar.data.stream import ClipStream, EpochLoader, SampleCounters
from lit_avatar.errors import UserError


class AvatarDataModule(pl.LightningDataModule):
    """Clips of `clip_frames` frames with aligned 16 kHz audio, a reference frame and the mouth box.

    Args:
        train_shards: training shards: a path, glob ("data/train-*.tar"), brace list
            ("data/train-{000000..000031}.tar"), "::"-joined specs, or a list of these.
        val_shards: validation shards, same forms; None disables validation data.
        batch_size: clips per training batch.
        val_batch_size: clips per validation batch (default: batch_size).
        num_workers: DataLoader workers per process (capped at the shards this node reads).
        clip_frames: frames per clip (T); audio has T * 640 samples. With use_precomputed it must be
            1 + temporal_factor * k so that whole causal latent frames are taken.
        size: frames are centre-cropped to a square and resized to size x size; None keeps the stored size.
        shuffle_buffer: samples held in each worker's shuffle buffer (training only).
        seed: seed of shard order, sample shuffling and clip starts (combined with epoch, rank, worker).
        use_precomputed: yield stored `latents`/`ref_latent` (and `audio_feats` when stored) instead of
            decoding video, reference and audio.
        drop_last: drop each worker's final partial training batch, so every batch has batch_size clips.
        pin_memory: pin batches in page-locked memory (GPU training).
    """

    def __init__(self, train_shards: str | list[str] | None = None, val_shards: str | list[str] | None = None,
                 batch_size: int = 4, val_batch_size: int | None = None, num_workers: int = 0,
                 clip_frames: int = 25, size: int | None = None, shuffle_buffer: int = 64, seed: int = 0,
                 use_precomputed: bool = False, drop_last: bool = True, pin_memory: bool = False) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("clip_frames", clip_frames)):
            if not isinstance(value, int) or value < 1:
                raise UserError(f"data.{name}={value!r}: expected a positive integer")
        if val_batch_size is not None and val_batch_size < 1:
            raise UserError(f"data.val_batch_size={val_batch_size!r}: expected a positive integer or null")
        if num_workers < 0:
            raise UserError(f"data.num_workers={num_workers!r}: expected >= 0")
        if size is not None and (size < 2 or size % 2):
            raise UserError(f"data.size={size!r}: expected an even number of pixels or null")
        if shuffle_buffer < 0:
            raise UserError(f"data.shuffle_buffer={shuffle_buffer!r}: expected >= 0")
        self.save_hyperparameters()
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.clip_frames, self.size = num_workers, clip_frames, size
        self.shuffle_buffer, self.seed, self.use_precomputed = shuffle_buffer, seed, use_precomputed
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self._shards: dict[str, list[str]] = {}
        self._counters: dict[str, SampleCounters] = {}

    def shards(self, split: str) -> list[str]:
        """Expanded shard list of "train" or "val" (raises UserError naming a glob/path that matches nothing)."""
        if split not in self._shards:
            spec = self.train_shards if split == "train" else self.val_shards
            if spec is None:
                raise UserError(f"data.{split}_shards: not set; expected a shard path, glob or brace list")
            self._shards[split] = expand_shards(spec, f"data.{split}_shards")
        return self._shards[split]

    def setup(self, stage: str | None = None) -> None:
        """Expand shard specs early, so a bad path fails before any model work starts."""
        if stage in (None, "fit"):
            self.shards("train")
        if self.val_shards is not None and stage in (None, "fit", "validate"):
            self.shards("val")

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    def _loader(self, split: str) -> EpochLoader:
        shards = self.shards(split)
        workers = min(self.num_workers, math.ceil(len(shards) / self._world_size()))
        counters = self._counters.get(split)
        if counters is None or counters.table.shape[0] != workers + 1:
            counters = self._counters[split] = SampleCounters(workers)
        train = split == "train"
        stream = ClipStream(shards, self.clip_frames, self.size, self.batch_size if train else self.val_batch_size,
                            counters, train=train, shuffle_buffer=self.shuffle_buffer, seed=self.seed,
                            use_precomputed=self.use_precomputed, drop_last=self.drop_last and train)
        return EpochLoader(stream, num_workers=workers, pin_memory=self.pin_memory,
                           persistent_workers=workers > 0)

    def train_dataloader(self) -> EpochLoader:
        return self._loader("train")

    def val_dataloader(self) -> EpochLoader | list:
        return self._loader("val") if self.val_shards is not None else []

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Per split: samples read, yielded, skipped (undecodable/too short) and shard read errors."""
        return {split: counters.totals() for split, counters in self._counters.items()}
