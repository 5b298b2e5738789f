"""Options that `eval` and `bench` share, named as in the training stages (torch-free)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from ..config import option
from ..engine.options import PRECISIONS
from ..errors import ConfigError


@dataclass
class EvalRunOptions:
    batch_size: int = option(64, "images per batch")
    workers: int = option(4, "data loading processes (webdataset sets: at most one per shard)",
                          also=["num_workers"])
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = option("auto", "fp32 on CPU and amp on CUDA when auto", choices=PRECISIONS)
    amp: Optional[bool] = option(None, "deprecated: use --precision amp (or fp32 for --no-amp)")
    cache_dir: Optional[str] = option(None, "where pretrained weights are downloaded to and looked for (open_clip's "
                                            "and CLIP_benchmark's --cache-dir; default: the Hugging Face cache)")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"--workers cannot be negative, got {self.workers}")
        if self.amp is not None:
            if self.precision != "auto":
                raise ConfigError("give --precision or the deprecated --amp/--no-amp, not both")
            logging.getLogger(__name__).warning("--amp/--no-amp is deprecated: use --precision amp or fp32")
            self.precision, self.amp = ("amp" if self.amp else "fp32"), None

    def resolved_device_and_precision(self):
        from ..engine.distributed import resolve_device
        from ..engine.precision import resolve_precision

        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device)
