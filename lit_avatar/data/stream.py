"""The webdataset pipeline: shards -> node/worker split -> tar samples -> shuffle -> decode + clip -> batches.

Bad data never ends an epoch: a shard that cannot be read (truncated, missing) and a sample that cannot
be decoded are skipped, logged and counted. The counters live in shared memory, so the main process
(and the LightningModule through the data module) sees what every DataLoader worker skipped.

Resumable position: the shard order of an epoch is a pure function of (seed, epoch). Each worker notes
when a shard is finished (read to its end and every sample it held has left the shuffle buffer) and
sends the shard's path to the main process with the batch that holds the shard's last sample.
`EpochLoader.state_dict()` is (epoch, shards finished in it); after `load_state_dict` the epoch resumes
without those shards. Shards that were only partly consumed are read again from their start, so up to
one shard per worker (plus those mixed into its shuffle buffer) may repeat partially; none repeats whole.
"""
from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_avatar.data.clips import choose_start, collate, make_clip, mixed_captions
from lit_avatar.data.schema import SampleError, decode_sample, has_ref, read_meta
from lit_avatar.errors import UserError

log = logging.getLogger(__name__)

# mixed_captions: batches where only some clips had a caption (trained without captions, on the null text)
COUNTER_FIELDS = ("read", "yielded", "skipped_samples", "shard_errors", "mixed_captions")
SHARDS_DONE = "__shards_done__"  # batch entry: shards finished with this batch (removed by EpochLoader)
STATE_VERSION = 1


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


class _ShardTracker:
    """Worker-local bookkeeping: which shards have been read to their end and fully left the shuffle."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # samples read from a shard and not yet out of the shuffle buffer
        self.read_to_end: set[str] = set()
        self.finished: list[str] = []

    def read(self, urls: Iterable[str], open_shard) -> Iterator[dict[str, Any]]:
        """Samples of `urls` in order, noting each sample read and each shard read to its end.

        Looks one sample ahead, so a shard counts as read to its end when its last sample is handed on
        (not only when the next shard is opened): the shard is then finished with the batch holding it.
        """
        for url in urls:
            self.held.setdefault(url, 0)
            samples = iter(open_shard(url))
            current = next(samples, None)
            while current is not None:
                following = next(samples, None)
                current["__url__"] = url
                self.held[url] += 1
                if following is None:
                    self.read_to_end.add(url)
                yield current
                current = following
            self.read_to_end.add(url)
            self._check(url)  # a shard without readable samples is finished at once

    def emitted(self, url: str) -> None:
        """A sample of `url` left the shuffle buffer (used or skipped)."""
        self.held[url] -= 1
        self._check(url)

    def _check(self, url: str) -> None:
        if url in self.read_to_end and self.held.get(url) == 0:
            self.read_to_end.discard(url)
            del self.held[url]
            self.finished.append(url)

    def take(self) -> list[str]:
        finished, self.finished = self.finished, []
        return finished


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
        report_shards: put the shards finished with each batch under `SHARDS_DONE` (and yield a batch of only
            that entry when a worker ends with unreported shards); EpochLoader turns this on and strips it.
    """

    def __init__(self, shards: list[str], clip_frames: int, size: int | None, batch_size: int,
                 counters: SampleCounters, train: bool = True, shuffle_buffer: int = 64, seed: int = 0,
                 use_precomputed: bool = False, drop_last: bool = False, report_shards: bool = False) -> None:
        super().__init__()
        self.shards, self.clip_frames, self.size = list(shards), clip_frames, size
        self.batch_size, self.counters, self.train = batch_size, counters, train
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.use_precomputed, self.drop_last, self.report_shards = use_precomputed, drop_last, report_shards
        # (epoch, shards already finished in it): set by EpochLoader.load_state_dict before workers start
        self.resume: tuple[int, frozenset[str]] | None = None
        # (rank, world size) seen by the main process: set by EpochLoader before workers start, because a
        # spawned worker (ddp_spawn, macOS, forkserver) has no process group and would read every rank's shards
        self.node: tuple[int, int] | None = None

    def epoch_order(self, epoch: int) -> list[str]:
        """All shards in the order epoch `epoch` reads them (before the node/worker split)."""
        urls = list(self.shards)
        if self.train:  # same order on every rank and worker, so the split is a partition
            random.Random(self.seed * 1_000_003 + max(epoch, 0)).shuffle(urls)
        return urls

    def _open_shard(self, url: str) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        return wds.tariterators.tarfile_samples([dict(url=url)], handler=self._shard_error)

    def _shard_error(self, err: Exception) -> bool:
        """webdataset handler: count and log an unreadable shard or tar member, then go on."""
        count = self.counters.add("shard_errors")
        if count <= 10 or count % 100 == 0:
            log.warning("skipping unreadable shard data (%d so far in this worker): %s", count, err)
        return True

    def _samples(self, rng: random.Random, tracker: _ShardTracker) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        epoch = int(self.counters.epoch)
        urls = self.epoch_order(epoch)
        if self.resume is not None and self.resume[0] == max(epoch, 0):
            # filtered before the split: every rank holds the same finished set (from one checkpoint)
            urls = [url for url in urls if url not in self.resume[1]]
        rank, world = self._node()
        urls = wds.split_by_worker(iter(urls[rank::world]))
        raw = tracker.read(urls, self._open_shard)
        if self.train and self.shuffle_buffer > 1:
            raw = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw)  # public, curried
        for sample in raw:
            self.counters.add("read")
            tracker.emitted(sample["__url__"])
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

    def _node(self) -> tuple[int, int]:
        """(rank, world size): as the main process saw it, else as this process sees it."""
        import webdataset as wds

        return self.node if self.node is not None else wds.utils.pytorch_worker_info()[:2]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        rank, _ = self._node()
        _, _, worker, _ = wds.utils.pytorch_worker_info()
        epoch = max(int(self.counters.epoch), 0)
        rng = random.Random(((self.seed * 1_000_003 + epoch) * 1009 + rank) * 1013 + worker)
        tracker = _ShardTracker()
        pending: list[dict[str, Any]] = []
        for clip in self._samples(rng, tracker):
            pending.append(clip)
            if len(pending) == self.batch_size:
                yield self._batch(pending, tracker)
                pending = []
        if pending and not self.drop_last:
            yield self._batch(pending, tracker)
        elif self.report_shards and tracker.finished:
            yield {SHARDS_DONE: tracker.take()}  # no clips: only tells the main process these are done

    def _batch(self, clips: list[dict[str, Any]], tracker: _ShardTracker) -> dict[str, Any]:
        if mixed_captions(clips):
            count = self.counters.add("mixed_captions")
            if count <= 10 or count % 100 == 0:
                log.warning("a batch mixes clips with and without captions (%d so far in this worker): it trains "
                            "on the null text; caption every clip or none", count)
        batch = collate(clips)
        if self.report_shards:
            batch[SHARDS_DONE] = tracker.take()
        return batch


class EpochLoader(DataLoader):
    """A DataLoader that bumps the shared epoch counter each time an epoch starts, and knows its position.

    Lightning calls `set_epoch` only on samplers, which an IterableDataset does not use; counting
    `__iter__` calls reseeds shard and sample shuffling per epoch, with persistent workers too.

    `state_dict()`/`load_state_dict()` make it resumable: Lightning's fit loop stores the state of every
    train loader that has them in the checkpoint ("loops" -> "fit_loop" -> "state_dict" ->
    "combined_loader") and loads it into the new loader before its first `iter()`. The state is the epoch
    and the shards finished in it (module docstring). Lightning pre-fetches one batch ahead of the step
    that is being trained, so shards that a batch finishes count only once `state_lag` more batches have
    been handed out; shards finished by the batch not yet trained are read again (partially repeated).
    Under DDP `state_dict()` gathers the finished shards of every rank, so all ranks must call it (Lightning
    does: every rank builds the checkpoint dict, rank 0 writes it).

    Args:
        dataset: the ClipStream (its shard reports are switched on here and removed from the batches).
        state_lag: batches handed out but not yet trained when a checkpoint is taken (Lightning: 1).
        **kwargs: DataLoader options (num_workers, pin_memory, persistent_workers, ...).
    """

    def __init__(self, dataset: ClipStream, state_lag: int = 1, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        dataset.report_shards = True
        self.state_lag = state_lag
        self._finished_shards: set[str] = set()  # finished in the current epoch, older than state_lag
        self._recent: deque[list[str]] = deque()  # per recent batch: the shards it finished
        self._epoch_done = False

    def __iter__(self):
        counters = self.dataset.counters
        counters.epoch += 1  # shared by every loader of this split: epochs keep counting
        import webdataset as wds

        self.dataset.node = wds.utils.pytorch_worker_info()[:2]  # the main process knows the rank
        resume = self.dataset.resume
        epoch = int(counters.epoch)
        self._finished_shards = set(resume[1]) if resume is not None and resume[0] == epoch else set()
        self._recent.clear()
        self._epoch_done = False
        return self._strip_reports(super().__iter__())

    def _strip_reports(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        resumed = bool(self._finished_shards)
        yielded = 0
        for batch in batches:
            finished = batch.pop(SHARDS_DONE, [])
            if not batch:  # a worker's end-of-stream report: belongs with the batches already handed out
                if self._recent:
                    self._recent[-1].extend(finished)
                else:
                    self._finished_shards.update(finished)
                continue
            self._recent.append(list(finished))
            while len(self._recent) > self.state_lag:
                self._finished_shards.update(self._recent.popleft())
            yielded += 1
            yield batch
        if not yielded and not resumed:
            # Otherwise Lightning starts empty epochs forever (max_steps is never reached).
            raise UserError(
                f"training data: a whole epoch gave no full batch of {self.dataset.batch_size} clips (each worker "
                "drops its last partial batch); lower data.batch_size or num_workers, or add clips to the shards"
            )
        for finished in self._recent:
            self._finished_shards.update(finished)
        self._recent.clear()
        self._epoch_done = True

    def state_dict(self) -> dict[str, Any]:
        """{"epoch", "epoch_done", "finished_shards" (sorted paths), "num_shards", "version"}."""
        finished, done = sorted(self._finished_shards), self._epoch_done
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (finished, done))
            finished = sorted({url for urls, _ in gathered for url in urls})
            done = all(rank_done for _, rank_done in gathered)
        return {"version": STATE_VERSION, "epoch": max(int(self.dataset.counters.epoch), 0), "epoch_done": done,
                "finished_shards": finished, "num_shards": len(self.dataset.shards)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: the next `iter()` resumes its epoch without the finished shards (or, when
        that epoch was done, starts the next one)."""
        expected = ("epoch", "epoch_done", "finished_shards")
        if not isinstance(state, dict) or any(key not in state for key in expected):
            raise UserError(f"checkpoint data-loader state {str(state)[:80]!r}: expected a dict with keys "
                            f"{', '.join(expected)} (written by EpochLoader.state_dict)")
        epoch = int(state["epoch"])
        finished = frozenset(str(url) for url in state["finished_shards"])
        unknown = finished - set(self.dataset.shards)
        if unknown:
            log.warning("resuming data position: %d finished shard(s) of the checkpoint are not in this run's "
                        "shard list (e.g. %s); they are ignored", len(unknown), sorted(unknown)[0])
        # counters.epoch is what the next __iter__ increments
        self.dataset.counters.epoch.fill_(epoch if state["epoch_done"] else epoch - 1)
        self.dataset.resume = None if state["epoch_done"] else (epoch, finished & set(self.dataset.shards))
        if getattr(self, "_iterator", None) is not None:  # persistent workers hold a copy of the old dataset
            shutdown = getattr(self._iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._iterator = None
