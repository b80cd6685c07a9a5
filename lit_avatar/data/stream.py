"""The webdataset pipeline: shards -> node/worker split -> tar samples -> shuffle -> decode + clip -> batches.

Bad data never ends an epoch: a shard that cannot be read (truncated, missing) and a sample that cannot
be decoded are skipped, logged and counted. The counters live in shared memory, so the main process
(and the LightningModule through the data module) sees what every DataLoader worker skipped.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_avatar.data.clips import choose_start, collate, make_clip
from lit_avatar.data.schema import SampleError, decode_sample, has_ref, read_meta

log = logging.getLogger(__name__)

COUNTER_FIELDS = ("read", "yielded", "skipped_samples", "shard_errors")


class SampleCounters:
    """Sample counters shared between the main process and DataLoader workers (one row per worker).

    Args:
        num_workers: DataLoader workers; row `num_workers` is the main process (num_workers=0).
    """

    def __init__(self, num_workers: int) -> None:
        self.table = torch.zeros(num_workers + 1, len(COUNTER_FIELDS), dtype=torch.int64).share_memory_()
        self.epoch = torch.full((1,), -1, dtype=torch.int64).share_memory_()  # EpochLoader makes it 0

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        return self.table.shape[0] - 1 if info is None else info.id

    def add(self, field: str, amount: int = 1) -> int:
        """Add to this process's row; returns the new total of `field` for this row."""
        row, column = self._row(), COUNTER_FIELDS.index(field)
        self.table[row, column] += amount
        return int(self.table[row, column])

    def totals(self) -> dict[str, int]:
        """Sums over workers, e.g. {"read": 120, "yielded": 118, "skipped_samples": 2, "shard_errors": 0}."""
        return {name: int(value) for name, value in zip(COUNTER_FIELDS, self.table.sum(dim=0).tolist())}

    def reset(self) -> None:
        self.table.zero_()


class ClipStream(IterableDataset):
    """Batches of clips from webdataset shards (yields whole batches: use DataLoader(batch_size=None)).

    Args:
        shards: expanded shard paths/URLs.
        clip_frames: frames per clip.
        size: output side in pixels, or None to keep the stored size.
        batch_size: clips per batch.
        counters: shared counters (and the epoch number that reseeds shuffling).
        train: shuffle shards and samples and draw random clip starts; False is deterministic.
        shuffle_buffer: samples held for shuffling (train only).
        seed: base seed; combined with epoch, rank and worker.
        use_precomputed: read latents/ref_latent/audio_feats instead of decoding video.
        drop_last: drop each worker's final partial batch (keeps batch shapes fixed in training).
    """

    def __init__(self, shards: list[str], clip_frames: int, size: int | None, batch_size: int,
                 counters: SampleCounters, train: bool = True, shuffle_buffer: int = 64, seed: int = 0,
                 use_precomputed: bool = False, drop_last: bool = False) -> None:
        super().__init__()
        self.shards, self.clip_frames, self.size = list(shards), clip_frames, size
        self.batch_size, self.counters, self.train = batch_size, counters, train
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.use_precomputed, self.drop_last = use_precomputed, drop_last

    def _shard_error(self, err: Exception) -> bool:
        """webdataset handler: count and log an unreadable shard or tar member, then go on."""
        count = self.counters.add("shard_errors")
        if count <= 10 or count % 100 == 0:
            log.warning("skipping unreadable shard data (%d so far in this worker): %s", count, err)
        return True

    def _samples(self, rng: random.Random) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        urls = list(self.shards)
        if self.train:  # same order on every rank and worker, so the split below is a partition
            random.Random(self.seed * 1_000_003 + max(int(self.counters.epoch), 0)).shuffle(urls)
        urls = wds.split_by_worker(wds.split_by_node(iter(urls)))
        raw = wds.tariterators.tarfile_samples((dict(url=url) for url in urls), handler=self._shard_error)
        if self.train and self.shuffle_buffer > 1:
            raw = wds.filters._shuffle(raw, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        for sample in raw:
            self.counters.add("read")
            try:
                key = str(sample.get("__key__"))
                start = choose_start(read_meta(sample), key, self.clip_frames, rng, self.train, self.use_precomputed)
                # without a stored reference the whole video is needed to take one from another time
                window = (start, self.clip_frames) if has_ref(sample) else None
                decoded = decode_sample(sample, decode_video=not self.use_precomputed, video_window=window)
                clip = make_clip(decoded, self.clip_frames, self.size, start, use_precomputed=self.use_precomputed)
            except SampleError as err:
                count = self.counters.add("skipped_samples")
                if count <= 10 or count % 100 == 0:
                    log.warning("skipping sample (%d so far in this worker): %s", count, err)
                continue
            self.counters.add("yielded")
            yield clip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        epoch = max(int(self.counters.epoch), 0)
        rng = random.Random(((self.seed * 1_000_003 + epoch) * 1009 + rank) * 1013 + worker)
        pending: list[dict[str, Any]] = []
        for clip in self._samples(rng):
            pending.append(clip)
            if len(pending) == self.batch_size:
                yield collate(pending)
                pending = []
        if pending and not self.drop_last:
            yield collate(pending)


class EpochLoader(DataLoader):
    """A DataLoader that bumps the shared epoch counter each time an epoch starts.

    Lightning calls `set_epoch` only on samplers, which an IterableDataset does not use; counting
    `__iter__` calls reseeds shard and sample shuffling per epoch, with persistent workers too.
    """

    def __init__(self, dataset: ClipStream, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)

    def __iter__(self):
        self.dataset.counters.epoch += 1  # shared by every loader of this split: epochs keep counting
        return super().__iter__()
