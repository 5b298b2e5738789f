"""Check the training shards before any model is built: they exist, open, are enough for every
worker of every rank, and their first sample has the members the run needs.

Every failure is a DataError with one sentence, so a run with bad paths stops in a second instead of
after loading a teacher (or hanging, as open_clip does when samples lack the expected keys).
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import DataError
from .shards import (DEFAULT_IMAGE_KEY, DEFAULT_TEXT_KEY, BadSampleStats, UNREADABLE_SHARD, count_samples,
                     expand_urls, is_local, iter_raw_samples, key_alternatives, local_path, stats_file)


@dataclass
class PreflightReport:
    urls: list
    num_shards: int
    num_samples: Optional[int]   # None when the shards carry no sizes.json/__len__/img2dataset *_stats.json
    first_sample_members: list   # extensions of the first sample, e.g. ["jpg", "json", "txt"]


def _check_local_shards(urls: list[str]) -> None:
    folders = [u for u in urls if local_path(u).is_dir()]
    if folders:
        raise DataError(f"shard {folders[0]} is a folder, not a tar file: name the shards inside it, e.g. "
                        f"'{folders[0].rstrip('/')}/{{00000..00009}}.tar'")
    missing = [u for u in urls if not local_path(u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}")
    for url in urls:  # a header check is cheap even for thousands of shards
        path = local_path(url)
        try:
            with open(path, "rb") as f:
                header = f.read(512)
            tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"shard {url} is not a readable tar file ({type(e).__name__})") from None


SIZES_CLAIM_FACTOR = 2  # sizes.json may not claim more than this many times a shard's real samples


def _check_sizes_claim(url: str) -> None:
    """A sizes.json that claims far more samples than the first shard holds would make every epoch read the
    data many times over, silently: refuse it (tar headers only, no image is decoded)."""
    if not is_local(url):
        return
    path = local_path(url)
    sizes_file = path.parent / "sizes.json"
    if not sizes_file.is_file():
        sizes_file = stats_file(path)  # raw img2dataset output: the shard's own stats file counts it
        if not sizes_file.is_file():
            return
    claimed = count_samples([url])
    if not claimed:
        return
    try:
        with tarfile.open(path, "r:") as tar:
            keys = {m.name.split("/")[-1].split(".", 1)[0] for m in tar if m.isfile()}
    except (OSError, tarfile.TarError):
        return  # an unreadable shard is reported when it is read
    if keys and claimed > SIZES_CLAIM_FACTOR * len(keys):
        raise DataError(f"{sizes_file} says {path.name} holds {claimed} samples but it holds {len(keys)}: fix "
                        f"{sizes_file.name} (or give --train-num-samples), or every epoch would repeat the data")


def preflight(train_data: str, *, workers: int, world_size: int, resampled: bool = False,
              image_key: str = DEFAULT_IMAGE_KEY, text_key: str = DEFAULT_TEXT_KEY,
              caption_json_field: Optional[str] = None, needed_keys: Sequence[str] = ()) -> PreflightReport:
    """Raise DataError unless `train_data` can feed `world_size` ranks × `workers` loader workers.

    `needed_keys` are further member extensions every sample must have (e.g. cached embeddings,
    `"t_img.npy"`); alternatives are separated by `;` as in `image_key`.
    """
    urls = expand_urls(train_data)
    readers = world_size * max(workers, 1)
    if not resampled and len(urls) < readers:
        raise DataError(f"{train_data} has {len(urls)} shard(s) but {world_size} rank(s) × {max(workers, 1)} "
                        f"worker(s) need at least {readers}: use fewer --workers, more shards, or --dataset-resampled")
    local = [u for u in urls if is_local(u)]
    _check_local_shards(local)
    _check_sizes_claim(urls[0])
    stats = BadSampleStats()
    first = next(iter_raw_samples(urls[0], stats), None)
    if first is None:
        reason = stats.examples.get(UNREADABLE_SHARD, [{}])[0].get("detail") or "it holds no sample"
        raise DataError(f"cannot read a sample from the first shard {urls[0]}: {reason}")
    members = sorted(k for k in first if not k.startswith("__"))
    needed = [image_key, "json" if caption_json_field else text_key, *needed_keys]
    for spec in needed:
        if not any(ext in first for ext in key_alternatives(spec)):
            raise DataError(f"the first sample ({first['__key__']} in {urls[0]}) has members {members} but the run "
                            f"needs '{spec}': the shards must hold an image (jpg, png or webp) and a caption (txt) "
                            f"per sample, as img2dataset writes them")
    if caption_json_field:
        import json

        try:
            caption = json.loads(first["json"]).get(caption_json_field)
        except (ValueError, AttributeError):
            caption = None
        if not isinstance(caption, str):
            raise DataError(f"the first sample ({first['__key__']} in {urls[0]}) has no string field "
                            f"'{caption_json_field}' in its json member")
    return PreflightReport(urls=urls, num_shards=len(urls), num_samples=count_samples(urls),
                           first_sample_members=members)
