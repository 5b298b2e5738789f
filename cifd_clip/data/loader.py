"""The training stream: shards → decoded samples → sample stages → preprocess → batches, split over
ranks and dataloader workers so that every rank yields exactly the same number of batches.

What an epoch is
----------------
Let N be the number of samples (`num_samples`, else counted from sizes.json/__len__/*_stats.json), B the per-rank
batch size, R the world size and K = max(workers, 1) the workers per rank. Every rank yields exactly
`num_batches = N // (B·R)` full batches per epoch, in every mode; worker k of a rank produces the
rank's batches k, k+K, k+2K, ... so the rank's batch order does not depend on worker timing.
The R·K workers of the job are "readers"; reader g = rank·K + k.

- Default (not resampled): at each epoch the shard list is shuffled with (seed, epoch) and dealt
  round-robin to the readers (reader g reads shards g, g+R·K, ...; there must be at least R·K shards).
  Each reader reads its shards once, shuffling samples in a buffer, and stops at its batch quota.
  If its shards hold more good samples than its quota the rest wait for a later epoch (another
  shuffle); if they hold fewer, it starts its shards again in a new order, so a few samples repeat.
  With equally sized shards and N divisible by B·R·K, every sample is seen exactly once per epoch.
- Resampled: each reader draws shards with replacement (seeded by seed, epoch, reader); an epoch is
  just `num_batches` batches per rank (N samples in all), so samples may repeat or be missed.

Workers are persistent by default (started once, at the first epoch; open_clip_train does the same). A worker holds
the copy of the stream it was started with, so what changes between epochs, the epoch and the batches a resume
skips, lives in shared memory (`SharedInt`, open_clip_train's SharedEpoch): the main process sets it before an
epoch's batches are asked for, and each worker reads it once when it starts the epoch. Sample stages with a
`set_epoch` method (the embedding cache's join) get the epoch there, in the worker that runs them.

Bad samples are skipped in the workers and counted by reason; the counts travel back to the main
process inside each batch (key `__stats__`) and `DataInfo` adds them up and stops the run with a
DataError when more than `max_bad_fraction` of the samples read are bad.
"""
from __future__ import annotations

import logging
import multiprocessing
import random
from dataclasses import dataclass, field
from multiprocessing.context import get_spawning_popen
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ..errors import DataError
from .shards import (DEFAULT_IMAGE_KEY, DEFAULT_TEXT_KEY, BadSampleStats, count_samples, decode_sample,
                     expand_urls, iter_raw_samples)

logger = logging.getLogger(__name__)

STATS_KEY = "__stats__"
BASE_FIELDS = ("key", "url", "image", "text")
# Before this many samples a few bad ones early on must not stop a run; the check is exact at epoch end.
MIN_SAMPLES_BEFORE_BAD_CHECK = 1000


class SharedInt:
    """An int that the main process sets and loader workers read, persistent ones included (a shared-memory
    multiprocessing.Value, as open_clip_train's SharedEpoch): a worker's copy of the dataset would otherwise keep
    the value it was started with. It has no lock, so that it also reaches workers of a spawn or forkserver
    context: the main process writes it between epochs and a worker reads it once as it starts one. A copy made
    other than by starting a worker (pickle, deepcopy) is detached: it holds the value, unshared."""

    def __init__(self, value: int = 0):
        self._shared = multiprocessing.Value("q", int(value), lock=False)

    def get(self) -> int:
        return int(self._shared.value)

    def set(self, value: int) -> None:
        self._shared.value = int(value)

    def __getstate__(self):
        return {"shared": self._shared} if get_spawning_popen() is not None else {"value": self.get()}

    def __setstate__(self, state):
        shared = state.get("shared")
        self._shared = shared if shared is not None else multiprocessing.Value("q", state["value"], lock=False)


def shared_int_property(attr: str) -> property:
    """A plain int attribute backed by the `SharedInt` in `attr`: set in the main process, read by the workers."""
    return property(lambda self: getattr(self, attr).get(), lambda self, value: getattr(self, attr).set(value))


def reader_quota(num_batches: int, workers_per_rank: int, role: int) -> int:
    """Batches that worker `role` of a rank produces: the rank's batches role, role+K, ..."""
    return num_batches // workers_per_rank + (1 if role < num_batches % workers_per_rank else 0)


def batches_before(skip_batches: int, workers_per_rank: int, role: int) -> int:
    """How many of the rank's first `skip_batches` batches belong to worker `role`."""
    return max(0, (skip_batches - role + workers_per_rank - 1) // workers_per_rank)


def _stack(tensors: list) -> torch.Tensor:
    """torch.stack, but in a loader worker straight into shared memory (torch's default_collate does the same): the
    batch crosses to the training process in shared memory, so stacking elsewhere would copy it once more."""
    if get_worker_info() is None:
        return torch.stack(tensors)
    return default_collate(tensors)


def collate(samples: list[dict], tokenizer: Callable, teacher_tokenizer: Optional[Callable] = None) -> dict:
    """Stack preprocessed samples into a batch; extra array/number fields become float tensors."""
    batch: dict[str, Any] = {
        "image": _stack([s["image"] for s in samples]),
        "text": torch.as_tensor(tokenizer([s["text"] for s in samples])).long(),
        "key": [s["key"] for s in samples],
        "url": [s["url"] for s in samples],
    }
    if teacher_tokenizer is not None:
        batch["teacher_text"] = torch.as_tensor(teacher_tokenizer([s["text"] for s in samples])).long()
    if "teacher_image" in samples[0]:
        batch["teacher_image"] = _stack([s["teacher_image"] for s in samples])
    for name in samples[0]:
        if name in BASE_FIELDS or name in batch:
            continue
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values).float()
        elif isinstance(values[0], (np.ndarray, np.generic, float, int)):
            batch[name] = torch.as_tensor(np.stack([np.asarray(v, dtype=np.float32) for v in values]))
        else:
            batch[name] = values
    return batch


class ShardStream(IterableDataset):
    """One rank's share of the shards, as batches; see the module docstring for what an epoch is."""

    def __init__(self, urls: list[str], *, preprocess: Callable, tokenizer: Callable, batch_size: int,
                 num_batches: int, seed: int, rank: int, world_size: int, resampled: bool,
                 teacher_preprocess: Optional[Callable] = None, teacher_tokenizer: Optional[Callable] = None,
                 sample_stages: Sequence[Callable] = (), image_key: str = DEFAULT_IMAGE_KEY,
                 text_key: str = DEFAULT_TEXT_KEY, caption_json_field: Optional[str] = None,
                 shuffle_buffer: int = 1000):
        self.urls = list(urls)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.teacher_preprocess, self.teacher_tokenizer = teacher_preprocess, teacher_tokenizer
        self.sample_stages = list(sample_stages)
        self.batch_size, self.num_batches = batch_size, num_batches
        self.seed, self.rank, self.world_size, self.resampled = seed, rank, world_size, resampled
        self.image_key, self.text_key, self.caption_json_field = image_key, text_key, caption_json_field
        self.shuffle_buffer = shuffle_buffer
        # set by DataInfo.iterate before an epoch's batches are asked for; read by each worker as it starts the epoch
        self._epoch, self._skip_batches = SharedInt(0), SharedInt(0)

    epoch = shared_int_property("_epoch")
    skip_batches = shared_int_property("_skip_batches")

    def __len__(self) -> int:
        return self.num_batches

    # -- which raw samples a reader reads --------------------------------------------------------
    def _reader_passes(self, epoch: int, reader: int, readers: int, rng: random.Random) -> Iterator[list[str]]:
        """Lists of shards, one per pass; samples are shuffled within a pass, never across passes."""
        if self.resampled:
            while True:
                yield [rng.choice(self.urls) for _ in range(len(self.urls))]
        order = list(self.urls)
        random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        mine = order[reader::readers]
        if not mine:
            raise DataError(f"reader {reader} of {readers} got no shard: use at least {readers} shards or --dataset-resampled")
        yield mine
        while True:
            mine = list(mine)
            rng.shuffle(mine)
            yield mine

    def _shuffled(self, urls: list[str], rng: random.Random, stats: BadSampleStats) -> Iterator[dict]:
        buffer: list[dict] = []
        for url in urls:
            for raw in iter_raw_samples(url, stats):
                buffer.append(raw)
                if len(buffer) > self.shuffle_buffer:
                    i = rng.randrange(len(buffer))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _decoded(self, epoch: int, reader: int, readers: int, stats: BadSampleStats) -> Iterator[dict]:
        rng = random.Random(f"reader:{self.seed}:{epoch}:{reader}")
        for again, shards in enumerate(self._reader_passes(epoch, reader, readers, rng)):
            usable = 0
            for raw in self._shuffled(shards, rng, stats):
                sample = decode_sample(raw, image_key=self.image_key, text_key=self.text_key,
                                       caption_json_field=self.caption_json_field, stats=stats)
                if sample is not None:
                    usable += 1
                    if again and not self.resampled:
                        stats.repeated += 1
                    yield sample
            if not usable:
                raise DataError(f"shards {shards[0]} ... ({len(shards)} shards) hold no usable sample: "
                                f"{stats.summary()}")

    def _prepare(self, sample: dict, epoch: int, reader: int, index: int) -> dict:
        # Random augmentations draw from RNGs seeded per sample, so a run (and a resumed run, which
        # skips samples without preprocessing them) sees the same crops; the caller's RNG state is kept.
        sample_seed = hash((self.seed, epoch, reader, index)) & 0x7FFF_FFFF_FFFF_FFFF
        in_main_process = get_worker_info() is None
        if in_main_process:
            saved = torch.get_rng_state(), random.getstate()
        torch.default_generator.manual_seed(sample_seed)  # CPU only: torch.manual_seed costs 90 us
        random.seed(sample_seed)
        try:
            for stage in self.sample_stages:
                sample = stage(sample)
            image = sample["image"]
            if self.teacher_preprocess is not None:
                sample["teacher_image"] = self.teacher_preprocess(image)
            sample["image"] = self.preprocess(image)
        finally:
            if in_main_process:
                torch.set_rng_state(saved[0])
                random.setstate(saved[1])
        return sample

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, skip_batches = self.epoch, self.skip_batches  # read once: the main process may set the next ones
        for stage in self.sample_stages:
            if hasattr(stage, "set_epoch"):  # e.g. the embedding cache's join, which draws a cached view per epoch
                stage.set_epoch(epoch)
        # Rotate worker roles so that after skipping k batches, the first worker asked holds batch k.
        role = (worker + skip_batches) % workers
        reader, readers = self.rank * workers + role, self.world_size * workers
        quota = reader_quota(self.num_batches, workers, role)
        produced = batches_before(skip_batches, workers, role)  # skipped batches count toward the quota
        skip = produced * self.batch_size
        stats = BadSampleStats()
        pending = []
        if produced >= quota:
            return
        for index, sample in enumerate(self._decoded(epoch, reader, readers, stats)):
            if index < skip:
                continue
            pending.append(self._prepare(sample, epoch, reader, index))
            if len(pending) == self.batch_size:
                batch = collate(pending, self.tokenizer, self.teacher_tokenizer)
                batch[STATS_KEY] = stats.take()
                pending = []
                yield batch
                produced += 1
                if produced >= quota:
                    return


def _limit_worker_threads(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and resize; intra-op threads would only fight the trainer


def _clean_worker_error(e: DataError) -> DataError:
    """A DataError re-raised from a worker carries the worker's traceback; keep its sentence only."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    last = lines[-1] if lines else str(e)
    return DataError(last.split("DataError: ", 1)[1] if "DataError: " in last else last)


@dataclass
class DataInfo:
    """A rank's training stream. Iterate with `iterate(epoch, skip_batches)`; see loader module docs."""

    dataloader: DataLoader
    dataset: ShardStream
    num_samples: int
    num_batches: int
    max_bad_fraction: float = 0.05
    bad_samples: BadSampleStats = field(default_factory=BadSampleStats)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = int(epoch)

    def absorb(self, batch: dict) -> dict:
        """Take the bad-sample counts out of a batch, add them up and stop if there are too many."""
        stats = batch.pop(STATS_KEY, None)
        if stats is not None:
            self.bad_samples.merge(stats)
            if self.bad_samples.good + self.bad_samples.bad >= MIN_SAMPLES_BEFORE_BAD_CHECK:
                self.check_bad_fraction()
        return batch

    def check_bad_fraction(self) -> None:
        if self.bad_samples.bad_fraction > self.max_bad_fraction:
            raise DataError(f"too much bad data, more than the allowed {100 * self.max_bad_fraction:g}% "
                            f"(--max-bad-fraction): {self.bad_samples.summary()}")

    def bad_report(self) -> dict:
        """Counts so far: {"good", "bad", "counts": {reason: n}, "examples": {reason: [{shard, key}]}}."""
        return self.bad_samples.to_dict()

    def iterate(self, epoch: Optional[int] = None, skip_batches: int = 0) -> Iterator[dict]:
        """The batches of one epoch, after the first `skip_batches` (exact-step resume)."""
        if epoch is not None:
            self.set_epoch(epoch)
        if not 0 <= skip_batches <= self.num_batches:
            raise DataError(f"cannot skip {skip_batches} batches of an epoch of {self.num_batches}")
        self.dataset.skip_batches = int(skip_batches)
        repeated_before = self.bad_samples.repeated
        try:
            for batch in self.dataloader:
                yield self.absorb(batch)
        except DataError as e:
            raise _clean_worker_error(e) from None
        finally:
            self.dataset.skip_batches = 0
        if self.bad_samples.bad:
            logger.warning("bad samples skipped so far: %s", self.bad_samples.summary())
        repeated = self.bad_samples.repeated - repeated_before
        if repeated:
            logger.warning("this epoch read %d of the %d samples this process trained on a second time: its shards "
                           "hold fewer usable samples than its share of the epoch (uneven shards, bad samples, or a "
                           "sizes.json / --train-num-samples that counts more than the shards hold)", repeated,
                           self.num_batches * self.dataset.batch_size)
        self.check_bad_fraction()

    def __iter__(self) -> Iterator[dict]:
        return self.iterate()

    def __len__(self) -> int:
        return self.num_batches


def make_train_loader(train_data: str, *, preprocess: Callable, tokenizer: Callable, batch_size: int,
                      workers: int, seed: int, rank: int = 0, world_size: int = 1,
                      num_samples: Optional[int] = None, resampled: bool = False,
                      teacher_preprocess: Optional[Callable] = None, teacher_tokenizer: Optional[Callable] = None,
                      sample_stages: Sequence[Callable] = (), image_key: str = DEFAULT_IMAGE_KEY,
                      text_key: str = DEFAULT_TEXT_KEY, caption_json_field: Optional[str] = None,
                      max_bad_fraction: float = 0.05, shuffle_buffer: int = 1000,
                      pin_memory: bool = False, persistent_workers: bool = True) -> DataInfo:
    """Build rank `rank`'s training stream over the shards of `train_data` (see module docstring).
    `pin_memory`: page-locked batches (the training stages pass `precision.resolve_pin_memory`'s answer);
    `persistent_workers`: keep the workers between epochs (no effect with workers=0)."""
    urls = expand_urls(train_data)
    if batch_size < 1 or workers < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"invalid loader sizes: batch_size={batch_size}, workers={workers}, rank={rank}, world_size={world_size}")
    readers = world_size * max(workers, 1)
    if not resampled and len(urls) < readers:
        raise DataError(f"{train_data} has {len(urls)} shards but {world_size} rank(s) × {max(workers, 1)} worker(s) "
                        f"need at least {readers}: use fewer --workers, more shards, or --dataset-resampled")
    if num_samples is None:
        num_samples = count_samples(urls)
        if num_samples is None:
            raise DataError(f"cannot count the samples of {train_data} (no sizes.json, __len__ or img2dataset "
                            f"*_stats.json for every shard beside them): give --train-num-samples")
    num_batches = num_samples // (batch_size * world_size)
    if num_batches < 1:
        raise DataError(f"{num_samples} samples are fewer than one global batch of {batch_size} × {world_size} ranks")
    dataset = ShardStream(urls, preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size,
                          num_batches=num_batches, seed=seed, rank=rank, world_size=world_size, resampled=resampled,
                          teacher_preprocess=teacher_preprocess, teacher_tokenizer=teacher_tokenizer,
                          sample_stages=sample_stages, image_key=image_key, text_key=text_key,
                          caption_json_field=caption_json_field, shuffle_buffer=shuffle_buffer)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=bool(persistent_workers and workers),
                        worker_init_fn=_limit_worker_threads if workers else None)
    return DataInfo(dataloader=loader, dataset=dataset, num_samples=num_samples, num_batches=num_batches,
                    max_bad_fraction=max_bad_fraction)
