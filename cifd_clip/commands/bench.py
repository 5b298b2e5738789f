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
from ..evaluation.options import EvalRunOptions


@dataclass
class Config(EvalRunOptions):
    suite: str = required("suite YAML (e.g. eval/suites/paper.yaml), or the name of one that ships with cifd_clip: "
                                 "paper, demo")
    model: list[str] = required("model spec(s), one or more: --model A B")
    output_dir: str = required("folder for the result JSONs, results.json and results.md")
    dataset_root_base: Optional[str] = option(None, "what {root} means in the suite's dataset roots "
                                                    "(default: the suite's dataset_root_base)")
    gallery_model: Optional[str] = option(None, "the teacher whose embeddings the suite's cross-model entries search "
                                                "each model's queries against (any --model spec)")
    gallery_pretrained: Optional[str] = option(None, "weights file or open_clip pretrained tag for --gallery-model")
    gallery_dir: Optional[str] = option(None, "where the teacher's embeddings of each cross-model set are kept, made "
                                              "once and reused (default: OUTPUT_DIR/gallery)")


def run(cfg: Config):
    from pathlib import Path

    from .. import config as config_lib
    from ..evaluation.suite import run_suite
    from ..output_checks import check_folder_target

    check_folder_target(cfg.output_dir, "--output-dir")
    device, precision = cfg.resolved_device_and_precision()
    summary = run_suite(cfg.suite, cfg.model, cfg.output_dir, dataset_root_base=cfg.dataset_root_base,
                        batch_size=cfg.batch_size, workers=cfg.workers, device=device, precision=precision,
                        gallery_model=cfg.gallery_model, gallery_pretrained=cfg.gallery_pretrained,
                        gallery_dir=cfg.gallery_dir, cache_dir=cfg.cache_dir)
    config_lib.save(cfg, Path(cfg.output_dir) / "bench_config.yaml")
    print(summary["markdown"])
    print(f"wrote {Path(cfg.output_dir) / 'results.md'} ({summary['missing']} missing, {summary['errors']} failed)")
    return 1 if summary["errors"] else 0
