"""A classifier teacher's outputs, cached once (`cifd-clip cls-embed`), in the embedding cache's format.

Each sample's K views (view 0 the plain image, the others the recipe's random views, drawn from (seed,
index)) go through the teacher once; the cache holds the pooled features (`t_img.npy` [K, D]), the logits
(`t_logits.npy` [K, C]), the label (`cls`) and the views (`paug.json`), in sibling shards of 1000 samples
named `SPLIT-NNNNN.tar`, keyed by the sample's index. `cache.json` records the teacher's fingerprint and the
dataset (spec, split, size), so a cache is never used with another teacher or other data.
Distillation replays the view it reads: one of the K drawn per (sample, epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data import embedding_cache as cache_lib
from ..data.augment import key_rng
from ..errors import UserError
from .data import PLAIN, ClassificationSet, Recipe, sample_view

SHARD_SIZE = 1000


def dataset_identity(data: ClassificationSet, split: str) -> dict:
    return {"name": data.name, "split": split, "num_samples": len(data), "num_classes": data.num_classes}


def sample_views(recipe: Recipe, seed: int, index: int, views: int, width: int, height: int) -> np.ndarray:
    rng = key_rng(seed, f"{index:08d}")
    rows = [PLAIN] + [sample_view(recipe, rng, width, height) for _ in range(views - 1)]
    return np.asarray(rows, dtype=np.float32)


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:05d}.tar"


class ClassificationCache:
    """All of a classification cache in memory (features, logits, views per sample index)."""

    def __init__(self, cache_dir: str | Path, data: ClassificationSet, split: str = "train"):
        meta = cache_lib.read_cache_meta(cache_dir)
        if meta.get("kind") != "classification":
            raise UserError(f"{cache_dir} is not a classifier's cache (made by cifd-clip embed, not cls-embed)")
        want = dataset_identity(data, split)
        if meta.get("dataset") != want:
            raise UserError(f"the cache {cache_dir} was made from other data ({meta.get('dataset')}), not {want}")
        self.meta, self.num_views = meta, int(meta["augmentation"]["views"])
        self.feature_dim, self.num_classes = int(meta["image_dim"]), int(meta["num_classes"])
        features, logits, views = [], [], []
        for shard in meta["shards"]:
            s = cache_lib.read_cached_shard(cache_dir, shard["name"], expected_count=shard["count"],
                                            views=self.num_views)
            features.append(s.image_emb)
            logits.append(s.logits)
            views.append(s.paug if s.paug is not None else np.tile(np.asarray(PLAIN, np.float32), (len(s.keys), 1, 1)))
        self.features = np.concatenate(features)
        self.logits = np.concatenate(logits)
        self.views = np.concatenate(views)
        if len(self.features) != len(data):
            raise UserError(f"the cache {cache_dir} holds {len(self.features)} samples, the data {len(data)}")

    def attach(self, views_dataset, seed: int) -> None:
        """Make the training views replay the cached ones and carry the cached teacher outputs."""
        cache, k = self, self.num_views

        def views_for(index: int, epoch: int):
            v = 0 if k == 1 else int(key_rng(seed, f"{index:08d}", epoch).integers(k))
            return cache.views[index, v], {"t_image_emb": torch.from_numpy(cache.features[index, v].astype(np.float32)),
                                           "t_logits": torch.from_numpy(cache.logits[index, v].astype(np.float32))}

        views_dataset.views_for = views_for


def iter_cached_outputs(cache_dir: str | Path, *, batch_size: int, seed: int = 0, epoch: int = 0) -> Iterator[dict]:
    """Batches for RDM training: every cached view of every sample, shuffled per epoch: `t_image_emb` [B, D],
    `t_logits` [B, C], `label` [B], `key` (index:view)."""
    meta = cache_lib.read_cache_meta(cache_dir)
    parts = [cache_lib.read_cached_shard(cache_dir, s["name"], expected_count=s["count"]) for s in meta["shards"]]
    features = np.concatenate([p.image_emb for p in parts])
    logits = np.concatenate([p.logits for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    keys = [k for p in parts for k in p.keys]
    n, k = features.shape[:2]
    order = np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n * k)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        sample, view = rows // k, rows % k
        yield {"t_image_emb": torch.from_numpy(features[sample, view].astype(np.float32)),
               "t_logits": torch.from_numpy(logits[sample, view].astype(np.float32)),
               "label": torch.from_numpy(labels[sample]), "key": [f"{keys[i]}" for i in sample]}
