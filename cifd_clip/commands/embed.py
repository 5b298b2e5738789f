"""Run a frozen teacher once over the training shards and cache its image and text embeddings.

Writes one sibling shard per source shard into --out (same basename, same keys in the same order) and a
cache.json naming the teacher, its weights fingerprint, the embedding dims, dtype and augmentation
settings (see docs/cache.md). Later stages read the cache instead of running the teacher.

Under torchrun each rank embeds its own shards. A killed run restarted with the same command skips the
shards that are complete; a different teacher or settings into the same --out is refused.

With --zeroshot-root the main rank then also embeds a zero-shot classification set (its images and every
class x template prompt) into OUT/zeroshot_eval.pt, so that train-rdm can report the RDMs' zero-shot
accuracy without loading the teacher. A file already made by the same teacher and settings is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..data.csv_source import CsvDataOptions
from ..errors import ConfigError


@dataclass
class Config(CsvDataOptions):
    teacher: str = required("teacher model spec: open_clip name, NAME@TAG, NAME@FILE, local-dir:PATH or a JSON config")
    teacher_pretrained: Optional[str] = option(None, "teacher weights file (or open_clip pretrained tag), as distill's",
                                               aliases=["pretrained"])
    cache_dir: Optional[str] = option(None, "where pretrained weights are downloaded to and looked for (open_clip's "
                                            "--cache-dir; default: the Hugging Face cache)")
    train_data: str = required("source shards: brace-expanded tar list, `::` joins sources (img2dataset layout)")
    out: str = required("cache folder (one sibling shard per source shard, plus cache.json)")
    overwrite: bool = option(False, "embed everything again, replacing a cache already in --out (by default a "
                                    "re-run resumes it, and a cache of other data or settings is refused)")
    augmentations: int = option(1, "image views per sample: view 0 is the plain image, the others random "
                                   "crops + flips whose parameters are stored to be replayed")
    aug_scale: list[float] = option([0.35, 1.0], "area range of the random crops (fraction of the image)")
    aug_seed: int = option(0, "seed of the random views (each sample's views depend on this seed and its key)")
    dtype: str = option("float16", "storage type of the embeddings", choices=["float16", "float32"])
    normalize: bool = option(True, "store L2-normalised embeddings (what CLIP compares and CIFD distils)")
    batch_size: int = option(64, "samples per teacher forward pass (each with --augmentations views)")
    workers: Optional[int] = option(None, "data-loading worker processes per rank (decode + preprocess); default: 0 on "
                                          "CPU, where a worker takes cores from the teacher's forward (slower: "
                                          "benchmarks/README.md), 4 on a GPU")
    precision: str = option("auto", "fp32 on CPU and amp on CUDA when auto", choices=["auto", "fp32", "amp", "amp_bf16"])
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    threads: Optional[int] = option(None, "CPU threads per rank for the teacher (default: torch's choice)")
    zeroshot_root: Optional[str] = option(None, "zero-shot classification set to embed into OUT/zeroshot_eval.pt "
                                                "for train-rdm's zero-shot accuracy (CLIP_benchmark layout)")
    zeroshot_dataset: str = option("wds/zeroshot", "dataset name of --zeroshot-root as cifd-clip eval knows it "
                                                   "(wds/NAME: CLIP_benchmark's webdataset layout)")

    def validate(self) -> None:
        CsvDataOptions.validate(self)
        if self.augmentations < 1:
            raise ConfigError(f"--augmentations must be at least 1, got {self.augmentations}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must not be negative, got {self.workers}")
        if len(self.aug_scale) != 2 or not 0 < self.aug_scale[0] <= self.aug_scale[1] <= 1:
            raise ConfigError(f"--aug-scale must be two numbers 0 < low <= high <= 1, got {self.aug_scale}")


def run(cfg: Config) -> int:
    from ..embed.teacher_run import embed_shards

    summary = embed_shards(cfg)
    if summary is not None:
        print(summary)
    return 0
