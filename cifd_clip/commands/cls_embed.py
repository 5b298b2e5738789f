"""Run a frozen classifier teacher once over a split and cache its pooled features and logits.

Each sample gets `--augmentations K` views (view 0 the plain image, the others the recipe's random crops and
flips, their parameters stored so that distillation replays them exactly); writes the embedding cache's format
(docs/cache.md) with `t_logits.npy` and `cls` members. `cls-train-rdm` and `cls-distill --cache` read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..errors import ConfigError


@dataclass
class Config:
    teacher: str = required("teacher classifier: a checkpoint of ours or NAME@FILE")
    train_data: str = required("data: cifar100:DIR, imagefolder:DIR or wds:SHARDS")
    out: str = required("cache folder")
    split: str = option("train", "which split of --train-data to embed", choices=["train", "val"])
    augmentations: int = option(1, "views per sample: view 0 is the plain image, the others random training views")
    aug_seed: int = option(0, "seed of the random views (a sample's views depend on it and the sample's index)")
    image_size: Optional[int] = option(None, "the teacher's input resolution (default: its recipe's)")
    dtype: str = option("float16", "storage type of the features", choices=["float16", "float32"])
    batch_size: int = option(128, "images per teacher forward pass")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option("auto", "fp32 on CPU and amp on CUDA when auto", choices=["auto", "fp32", "amp", "amp_bf16"])
    overwrite: bool = option(False, "replace a cache already in --out")

    def validate(self) -> None:
        if self.augmentations < 1 or self.batch_size < 1:
            raise ConfigError("--augmentations and --batch-size must be at least 1")


def run(cfg: Config) -> int:
    import json

    import torch

    from ..file_io import write_text_atomic

    from ..classify.cache import SHARD_SIZE, dataset_identity, sample_views, shard_name
    from ..classify.data import open_set, recipe_for, view_tensor
    from ..classify.models import load_classifier
    from ..data import embedding_cache as cache_lib
    from ..data.augment import AugmentSettings
    from ..engine.distributed import resolve_device
    from ..engine.precision import autocast, resolve_precision
    from ..output_checks import check_folder_target, hold_run_lock, refuse_to_replace
    from ..clip_models import weights_fingerprint

    out = check_folder_target(cfg.out, "--out")
    refuse_to_replace([out / cache_lib.META_FILE], "--out", cfg.overwrite, "an embedding cache")
    data = open_set(cfg.train_data, cfg.split)
    loaded = load_classifier(cfg.teacher)
    if loaded.num_classes != data.num_classes:
        raise ConfigError(f"teacher {cfg.teacher} predicts {loaded.num_classes} classes, the data has {data.num_classes}")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    net = loaded.net.to(device).eval()
    recipe = recipe_for(data.kind, cfg.image_size)
    hold_run_lock(out, "cache folder")
    settings = cache_lib.make_settings(
        teacher_spec=cfg.teacher, teacher_pretrained=None, teacher_model_name=loaded.name,
        teacher_fingerprint=weights_fingerprint(net), teacher_image_size=recipe.image_size,
        image_dim=net.feature_dim, text_dim=0, dtype=cfg.dtype, normalized=False,
        augmentation=AugmentSettings(views=cfg.augmentations, seed=cfg.aug_seed).to_dict(), kind="classification",
        num_classes=data.num_classes, dataset=dataset_identity(data, cfg.split))
    for old in out.glob("*.tar*"):
        old.unlink()
    done = []
    with torch.no_grad():
        for n, start in enumerate(range(0, len(data), SHARD_SIZE)):
            writer = cache_lib.SiblingShardWriter(out, shard_name(cfg.split, n), cfg.dtype)
            indices = range(start, min(start + SHARD_SIZE, len(data)))
            for b in range(0, len(indices), max(1, cfg.batch_size // cfg.augmentations)):
                chunk = list(indices)[b:b + max(1, cfg.batch_size // cfg.augmentations)]
                images, views = [], []
                for i in chunk:
                    image = data.image(i)
                    v = sample_views(recipe, cfg.aug_seed, i, cfg.augmentations, *image.size)
                    views.append(v)
                    images += [view_tensor(recipe, image, tuple(row), train=True) for row in v]
                with autocast(precision, device):
                    features, logits = net(torch.stack(images).to(device))
                k = cfg.augmentations
                features = features.float().view(len(chunk), k, -1).cpu().numpy()
                logits = logits.float().view(len(chunk), k, -1).cpu().numpy()
                for j, i in enumerate(chunk):
                    writer.write(f"{i:08d}", features[j], None, views[j], logits=logits[j], label=int(data.labels[i]))
            done.append(writer.commit({"source": f"{data.name}[{start}:{indices.stop}]", "skipped": 0,
                                       "settings": settings}))
    meta = cache_lib.write_cache_meta(out, settings, done)
    from ..classify.cost import forward_macs
    image_macs = forward_macs(net.cpu(), torch.zeros(3, recipe.image_size, recipe.image_size))
    write_text_atomic(out / "embed_cost.json", json.dumps(
        {"teacher_forward_macs": image_macs, "views": cfg.augmentations, "samples": len(data),
         "macs_total": image_macs * cfg.augmentations * len(data)}, indent=1))
    print(f"cache {out}: {meta['num_samples']} samples x {cfg.augmentations} views of {loaded.name} "
          f"({net.feature_dim}-d features, {data.num_classes} logits), {meta['bytes'] / 1e6:.1f} MB")
    return 0
