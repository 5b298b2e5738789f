"""open_clip_train's CSV datasets (`--dataset-type csv`): the CSV becomes shards once, then trains as any shards.

The training stream, the embedding cache (keyed by shard and sample key), exact resume and DDP all read
webdataset shards, so a CSV is written into them first by `make-shards` (`data.make_shards`), into the folder
beside it named `FILE.csv.shards/` (or `--csv-shards DIR`). The shards are deterministic and resumable:
`embed` and `distill` on the same CSV read the same shards, and a rerun converts nothing. A single process
converts; a multi-process run needs the shards made first (`cifd-clip make-shards`, or any single-process stage
on the CSV), since its ranks cannot all write one folder. Torch-free: the stage options inherit `CsvDataOptions`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import option
from ..errors import ConfigError, UserError

log = logging.getLogger(__name__)
DATASET_TYPES = ("auto", "webdataset", "csv")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class CsvDataOptions:
    dataset_type: str = option("auto", "what --train-data is (open_clip_train's --dataset-type): webdataset shards, "
                                       "a csv of image paths and captions, or auto (csv when it ends in .csv/.tsv)",
                               choices=list(DATASET_TYPES))
    csv_img_key: str = option("filepath", "CSV column of the image paths (open_clip_train's --csv-img-key)")
    csv_caption_key: str = option("title", "CSV column of the captions (open_clip_train's --csv-caption-key)")
    csv_separator: str = option("\t", "CSV column separator, one character; '\\t' spells a tab (open_clip_train's "
                                      "--csv-separator)")
    csv_shards: Optional[str] = option(None, "where a CSV's shards are written once and read from (default: "
                                             "FILE.csv.shards/ beside the CSV)")

    def validate(self) -> None:
        if self.dataset_type == "csv" and "::" in str(getattr(self, "train_data", "")):
            raise ConfigError("--dataset-type csv reads one CSV file as --train-data, not a list of sources")


def is_csv(cfg) -> bool:
    kind = getattr(cfg, "dataset_type", "webdataset")
    return kind == "csv" or (kind == "auto" and str(cfg.train_data).lower().endswith(CSV_SUFFIXES))


def shards_folder(cfg) -> Path:
    return Path(cfg.csv_shards) if cfg.csv_shards else Path(f"{cfg.train_data}.shards")


def resolve_csv_train_data(cfg, world_size: int = 1) -> None:
    """With a CSV as --train-data: make (or find) its shards and point cfg.train_data at them (dataset_type becomes
    webdataset, so the run's config.yaml reads the shards again on resume). Nothing to do for shards."""
    if not is_csv(cfg):
        return
    from .make_shards import csv_separator, make_shards, train_data_spec

    csv_file, out = Path(cfg.train_data), shards_folder(cfg)
    if not csv_file.is_file():
        raise UserError(f"--train-data {csv_file} is not a file (--dataset-type {cfg.dataset_type} reads a CSV)")
    if world_size > 1:
        names = sorted(p.name for p in out.glob("*.tar")) if (out / "sizes.json").is_file() else []
        if not names:
            raise UserError(f"a {world_size}-process run cannot write {csv_file}'s shards: make them first with "
                            f"`cifd-clip make-shards --input {csv_file} --out {out}` (or any single-process stage "
                            f"on the CSV), then run again")
        spec = train_data_spec(out, names)
    else:
        summary = make_shards(csv_file, out, img_key=cfg.csv_img_key, caption_key=cfg.csv_caption_key,
                              separator=csv_separator(cfg.csv_separator))
        if summary.skipped:
            log.warning("%s: %s", csv_file, summary.skipped_text())
        spec = train_data_spec(out, summary.shard_names)
    log.info("--train-data %s: %s (its shards in %s)", csv_file, spec, out)
    cfg.train_data, cfg.dataset_type = spec, "webdataset"


def world_size_from_env() -> int:
    """The launcher's process count (torchrun, srun), before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)
