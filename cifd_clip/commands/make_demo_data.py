"""Write the built-in demo data: captioned shape scenes for training, plus zero-shot and retrieval sets.

Images of one or two coloured shapes (6 kinds × 6 colours, small/large, plain/striped, 9 positions or a
left/right, above/below relation) with captions in several phrasings. Writes OUT/train and OUT/val
(img2dataset-style shards + sizes.json), OUT/zeroshot and OUT/retrieval (CLIP_benchmark webdataset
layout: use `--dataset wds/demo --dataset_root OUT/zeroshot`) and OUT/demo_info.json. The same seed and
sizes give byte-identical files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import option, required

logger = logging.getLogger(__name__)


@dataclass
class Config:
    out: str = required("folder to write the demo data to (new, empty, or earlier demo data to replace)")
    seed: int = option(0, "random seed; the same seed and sizes give byte-identical shards")
    train_samples: int = option(6000, "captioned training images")
    val_samples: int = option(500, "captioned validation images")
    zeroshot_samples: int = option(720, "zero-shot classification images (36 classes, balanced)")
    retrieval_samples: int = option(300, "retrieval images, each with 5 captions")
    image_size: int = option(64, "image side in pixels")
    samples_per_shard: int = option(500, "samples per tar shard")


def run(cfg: Config) -> int:
    from pathlib import Path

    from .. import config as config_lib
    from ..data.shapes import write_demo_data

    info = write_demo_data(cfg.out, seed=cfg.seed, train_samples=cfg.train_samples, val_samples=cfg.val_samples,
                           zeroshot_samples=cfg.zeroshot_samples, retrieval_samples=cfg.retrieval_samples,
                           image_size=cfg.image_size, samples_per_shard=cfg.samples_per_shard)
    config_lib.save(cfg, Path(cfg.out) / "make_demo_data.yaml")
    splits = ", ".join(f"{name} {s['samples']} samples in {s['shards']} shards" for name, s in info["splits"].items())
    print(f"demo data written to {cfg.out}: {splits}")
    print(f"train with --train-data '{Path(cfg.out) / info['train_data']}'")
    return 0
