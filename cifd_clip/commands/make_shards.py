"""Turn your own images and captions into training shards (img2dataset's webdataset layout).

`--input` is a CSV/TSV of image paths and captions (columns and separator as open_clip_train's
`--csv-img-key` / `--csv-caption-key` / `--csv-separator`; relative paths are resolved against the CSV's
folder) or a folder of images with same-named caption files (a.jpg + a.txt, subfolders included).
Writes OUT/NNNNN.tar (KEY.jpg|png|webp, KEY.txt, KEY.json), OUT/NNNNN_stats.json (img2dataset's per-shard
stats), OUT/sizes.json and OUT/make_shards.json; train with `--train-data 'OUT/{00000..NNNNN}.tar'`.
A rerun with the same input and options keeps the complete shards and writes the rest. Missing or
corrupt images and rows without a caption are skipped, counted in the stats and reported at the end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..errors import ConfigError

logger = logging.getLogger(__name__)

RESIZE_MODES = ("keep_ratio", "center_crop", "border")  # data.make_shards.RESIZE_MODES (kept torch- and PIL-free)


@dataclass
class Config:
    input: str = required("a CSV/TSV file of image paths and captions, or a folder of images with same-named "
                          "caption files (a.jpg + a.txt)")
    out: str = required("folder to write the shards to (new, empty, or an earlier make-shards run to resume)")
    csv_img_key: str = option("filepath", "CSV column holding the image paths (open_clip_train's --csv-img-key)")
    csv_caption_key: str = option("title", "CSV column holding the captions (open_clip_train's --csv-caption-key)")
    csv_separator: str = option("\t", "CSV column separator, one character; '\\t' spells a tab "
                                      "(open_clip_train's --csv-separator)")
    samples_per_shard: int = option(10000, "input rows per shard (img2dataset's --number_sample_per_shard)")
    image_size: Optional[int] = option(None, "resize every image to this side, stored as JPEG (default: images "
                                             "are stored as they are; other formats than JPEG/PNG/WebP become JPEG)")
    resize_mode: str = option("keep_ratio", "with --image-size: keep_ratio (shorter side to the size), "
                                            "center_crop (then a centre square) or border (longer side, padded "
                                            "to a square), as img2dataset has them", choices=RESIZE_MODES)
    workers: int = option(1, "processes writing shards side by side (img2dataset's --processes_count)")
    overwrite: bool = option(False, "replace the shards of another input or other options in --out")

    def validate(self) -> None:
        if self.samples_per_shard < 1:
            raise ConfigError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image-size must be at least 1, got {self.image_size}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")


def run(cfg: Config) -> int:
    from pathlib import Path

    from ..data.make_shards import make_shards, train_data_spec

    def progress(name: str, stats: dict) -> None:
        logger.info("%s: %d of %d inputs written", name, stats["successes"], stats["count"])

    summary = make_shards(cfg.input, cfg.out, samples_per_shard=cfg.samples_per_shard, image_size=cfg.image_size,
                          resize_mode=cfg.resize_mode, img_key=cfg.csv_img_key, caption_key=cfg.csv_caption_key,
                          separator=cfg.csv_separator, overwrite=cfg.overwrite, workers=cfg.workers,
                          progress=progress)
    if summary.skipped:
        logger.warning("make-shards %s", summary.skipped_text())
    kept = f" ({summary.kept_shards} complete shards of an earlier run kept)" if summary.kept_shards else ""
    skipped = (f"; skipped {sum(summary.skipped.values())} of {summary.inputs} inputs (by reason above and in each "
               f"NNNNN_stats.json)" if summary.skipped else "; nothing skipped")
    print(f"wrote {summary.written} samples in {len(summary.shard_names)} shards to {cfg.out}{kept}{skipped}")
    if summary.empty_shards:
        logger.warning("%d shard(s) held no usable input and were not written: --train-data leaves them out",
                       summary.empty_shards)
    spec = train_data_spec(Path(cfg.out), summary.shard_names)
    print(f"train with --train-data '{spec}'")
    return 0
