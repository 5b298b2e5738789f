"""The classification training stream, with the interface the training loop expects (`num_batches`,
`iterate(epoch, skip_batches)`, `set_epoch`, `dataloader`, `bad_report`).

Each epoch is a permutation of the set drawn from (seed, epoch); rank r takes every world-size-th batch of
it, so all ranks yield the same number of batches. A sample's augmentation view is drawn from (seed, epoch,
index) — the same in any worker and after a resume, which skips batches without decoding them. The batch order
is drawn in the main process; the epoch reaches the workers, persistent ones included, through shared memory
(`SharedInt`), since a persistent worker keeps the copy of `Views` it was started with. Batches are
dicts: `image` [B,3,H,W], `label` [B], `index` [B], `view` [B,5]; with an online teacher also
`teacher_image` (the same view through the teacher's own recipe, e.g. another resolution).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.loader import SharedInt, shared_int_property
from ..errors import DataError
from .data import PLAIN, ClassificationSet, Recipe, sample_view, view_tensor


def draw_view(recipe: Recipe, seed: int, epoch: int, index: int, width: int, height: int) -> tuple:
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])
    return sample_view(recipe, rng, width, height)


class Views(Dataset):
    """`(image tensor, label, index, view)` per index; random views in training, the plain one otherwise.
    `views_for(index, epoch) -> (view, fields)` replaces the random draw: a cached view to replay, and the
    cached teacher outputs for it (added to the item)."""

    def __init__(self, data: ClassificationSet, recipe: Recipe, *, train: bool, seed: int = 0,
                 teacher_recipe: Optional[Recipe] = None, views_for=None):
        self.data, self.recipe, self.train, self.seed = data, recipe, train, seed
        self.teacher_recipe, self.views_for = teacher_recipe, views_for
        self._epoch = SharedInt(0)

    epoch = shared_int_property("_epoch")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        image = self.data.image(index)
        fields = {}
        if self.views_for is not None:
            view, fields = self.views_for(index, self.epoch)
            view = tuple(float(v) for v in view)
        elif self.train:
            view = draw_view(self.recipe, self.seed, self.epoch, index, *image.size)
        else:
            view = PLAIN
        item = {"image": view_tensor(self.recipe, image, view, self.train), "label": int(self.data.labels[index]),
                "index": index, "view": torch.tensor(view, dtype=torch.float32), **fields}
        if self.teacher_recipe is not None:
            item["teacher_image"] = view_tensor(self.teacher_recipe, image, view, self.train)
        return item


class _EpochBatches(torch.utils.data.Sampler):
    def __init__(self, stream: "ClassificationStream"):
        self.stream = stream

    def __iter__(self):
        s = self.stream
        order = np.random.default_rng([s.seed & 0xFFFFFFFF, s.epoch, 7]).permutation(len(s.views)) if s.shuffle \
            else np.arange(len(s.views))
        global_batch = s.batch_size * s.world_size
        for b in range(s.skip_batches, s.num_batches):
            start = b * global_batch + s.rank * s.batch_size
            yield order[start:start + s.batch_size].tolist()

    def __len__(self) -> int:
        return self.stream.num_batches - self.stream.skip_batches


@dataclass
class ClassificationStream:
    views: Views
    batch_size: int
    workers: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    drop_last: bool = True
    pin_memory: bool = False  # the training stages pass precision.resolve_pin_memory's answer
    persistent_workers: bool = False  # keep the workers between epochs (the training stages' default)

    def __post_init__(self):
        per_step = self.batch_size * self.world_size
        self.num_batches = len(self.views) // per_step if self.drop_last else -(-len(self.views) // per_step)
        if self.num_batches < 1:
            raise DataError(f"{len(self.views)} samples are fewer than one global batch of {self.batch_size} × "
                            f"{self.world_size} ranks")
        self.epoch, self.skip_batches = 0, 0
        self.num_samples = len(self.views)
        self.dataloader = DataLoader(self.views, batch_sampler=_EpochBatches(self), num_workers=self.workers,
                                     pin_memory=self.pin_memory,
                                     persistent_workers=bool(self.persistent_workers and self.workers),
                                     worker_init_fn=_one_thread if self.workers else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.views.epoch = int(epoch)

    def iterate(self, epoch: Optional[int] = None, skip_batches: int = 0) -> Iterator[dict]:
        if epoch is not None:
            self.set_epoch(epoch)
        self.skip_batches = int(skip_batches)
        try:
            yield from self.dataloader
        finally:
            self.skip_batches = 0

    def bad_report(self) -> dict:
        return {"good": len(self.views), "bad": 0, "counts": {}, "examples": {}}

    def __len__(self) -> int:
        return self.num_batches


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)
