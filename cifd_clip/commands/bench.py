"""Run models over a benchmark suite and write a side-by-side table (results.md) and JSONs.

`cifd-clip bench --suite eval/suites/paper.yaml --model SPEC [SPEC ...] --output-dir DIR
--dataset-root-base DATA` evaluates every model on every dataset of the suite; `{root}` in the
suite's dataset roots becomes --dataset-root-base. Writes DIR/<model>__<dataset>__<task>.json
(CLIP_benchmark's keys and metric names), DIR/results.json and DIR/results.md. A dataset that is not
on disk shows as "missing (looked in PATH)" and does not stop the suite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..errors import ConfigError


@dataclass
class Config:
    suite: str = required("suite YAML (e.g. eval/suites/paper.yaml, eval/suites/demo.yaml)")
    model: list[str] = required("model spec(s), one or more: --model A B")
    output_dir: str = required("folder for the result JSONs, results.json and results.md")
    dataset_root_base: Optional[str] = option(None, "what {root} means in the suite's dataset roots "
                                                    "(default: the suite's dataset_root_base)")
    batch_size: int = option(64, "images per batch")
    num_workers: int = option(4, "data loading processes per dataset")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    amp: Optional[bool] = option(None, "mixed precision autocast (default: on for CUDA, off for CPU)")

    def validate(self):
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers cannot be negative, got {self.num_workers}")


def run(cfg: Config):
    from pathlib import Path

    from .. import config as config_lib
    from ..evaluation.suite import run_suite
    from .eval import resolve_device

    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.startswith("cuda")
    summary = run_suite(cfg.suite, cfg.model, cfg.output_dir, dataset_root_base=cfg.dataset_root_base,
                        batch_size=cfg.batch_size, workers=cfg.num_workers, device=device, amp=amp)
    config_lib.save(cfg, Path(cfg.output_dir) / "bench_config.yaml")
    print(summary["markdown"])
    print(f"wrote {Path(cfg.output_dir) / 'results.md'} ({summary['missing']} missing, {summary['errors']} failed)")
    return 1 if summary["errors"] else 0
