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
from ..errors import ConfigError


@dataclass
class Config:
    teacher: str = required("teacher model spec: open_clip name, NAME@TAG, NAME@FILE, local-dir:PATH or a JSON config")
    pretrained: Optional[str] = option(None, "teacher weights file (or open_clip pretrained tag)")
    train_data: str = required("source shards: brace-expanded tar list, `::` joins sources (img2dataset layout)")
    out: str = required("cache folder (one sibling shard per source shard, plus cache.json)")
    augmentations: int = option(1, "image views per sample: view 0 is the plain image, the others random "
                                   "crops + flips whose parameters are stored to be replayed")
    aug_scale: list[float] = option([0.35, 1.0], "area range of the random crops (fraction of the image)")
    aug_seed: int = option(0, "seed of the random views (each sample's views depend on this seed and its key)")
    dtype: str = option("float16", "storage type of the embeddings", choices=["float16", "float32"])
    normalize: bool = option(True, "store L2-normalised embeddings (what CLIP compares and CIFD distils)")
    batch_size: int = option(64, "samples per teacher forward pass (each with --augmentations views)")
    workers: int = option(1, "data-loading worker processes per rank (decode + preprocess)")
    precision: str = option("auto", "fp32 on CPU and amp on CUDA when auto", choices=["auto", "fp32", "amp", "amp_bf16"])
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    threads: Optional[int] = option(None, "CPU threads per rank for the teacher (default: torch's choice)")
    zeroshot_root: Optional[str] = option(None, "zero-shot classification set to embed into OUT/zeroshot_eval.pt "
                                                "for train-rdm's zero-shot accuracy (CLIP_benchmark layout)")
    zeroshot_dataset: str = option("wds/zeroshot", "dataset name of --zeroshot-root as cifd-clip eval knows it "
                                                   "(wds/NAME: CLIP_benchmark's webdataset layout)")

    def validate(self) -> None:
        if self.augmentations < 1:
            raise ConfigError(f"--augmentations must be at least 1, got {self.augmentations}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"--workers must not be negative, got {self.workers}")
        if len(self.aug_scale) != 2 or not 0 < self.aug_scale[0] <= self.aug_scale[1] <= 1:
            raise ConfigError(f"--aug-scale must be two numbers 0 < low <= high <= 1, got {self.aug_scale}")


def run(cfg: Config) -> int:
    summary = embed_shards(cfg)
    if summary is not None:
        print(summary)
    return 0


# ---------------------------------------------------------------- data side (runs in loader workers)


class _ShardInputsBase:
    """This rank's shards as teacher inputs, one item per sample, then an end-of-shard item with its stats.

    Each loader worker reads whole shards (shard i goes to worker i % workers), so a shard's samples
    keep their order and its end marker comes after all of them.
    """

    def __init__(self, urls, preprocess, tokenizer, augment):
        self.urls, self.preprocess, self.tokenizer, self.augment = list(urls), preprocess, tokenizer, augment

    def __iter__(self):
        import torch

        from ..data.augment import apply_params, sample_views
        from ..data.shards import BadSampleStats, iter_samples

        info = torch.utils.data.get_worker_info()
        mine = self.urls[info.id::info.num_workers] if info is not None else self.urls
        for url in mine:
            stats = BadSampleStats()
            for sample in iter_samples([url], stats=stats):
                image = sample["image"]
                params = sample_views(self.augment, sample["key"], *image.size)
                views = torch.stack([self.preprocess(apply_params(image, p)) for p in params])
                yield {"url": url, "key": sample["key"], "images": views, "paug": params,
                       "tokens": self.tokenizer([sample["text"]])[0]}
            yield {"url": url, "end": True, "stats": stats.to_dict()}


_lazy_classes: dict = {}


def __getattr__(name):
    # The loader needs a torch IterableDataset, but importing torch here would slow down `cifd-clip --help`;
    # the class is made on first use and found again by name when workers unpickle it (PEP 562).
    if name == "ShardInputs":
        if name not in _lazy_classes:
            from torch.utils.data import IterableDataset
            _lazy_classes[name] = type("ShardInputs", (_ShardInputsBase, IterableDataset), {"__module__": __name__})
        return _lazy_classes[name]
    raise AttributeError(name)


# ---------------------------------------------------------------- teacher side


def _teacher_settings(cfg: Config, teacher, augment) -> dict:
    from ..data import cache as cache_lib
    from ..towers import weights_fingerprint

    tower = teacher.tower
    return cache_lib.make_settings(
        teacher_spec=cfg.teacher, teacher_pretrained=cfg.pretrained, teacher_model_name=tower.model_name,
        teacher_fingerprint=weights_fingerprint(tower.model),
        teacher_image_size=tower.model_cfg.get("vision_cfg", {}).get("image_size"),
        image_dim=tower.embed_dim, text_dim=tower.embed_dim, dtype=cfg.dtype, normalized=cfg.normalize,
        augmentation=augment.to_dict(), teacher_logit_scale=float(tower.model.logit_scale.detach().exp()))


def _refuse_other_settings(out, settings: dict) -> None:
    """A cache folder holds embeddings of one teacher and one set of settings, finished or not."""
    import json

    from ..data import cache as cache_lib
    from ..errors import UserError

    found = []
    meta_path = out / cache_lib.META_FILE
    if meta_path.is_file():
        try:
            found.append((meta_path.name, json.loads(meta_path.read_text())))
        except json.JSONDecodeError:
            pass
    for marker in sorted(out.glob(f"*{cache_lib.DONE_SUFFIX}")):
        if marker.name != cache_lib.META_FILE:
            try:
                found.append((marker.name, json.loads(marker.read_text()).get("settings", {})))
            except (json.JSONDecodeError, AttributeError):
                continue
    for name, have in found:
        diffs = cache_lib.settings_differences(have, settings)
        if diffs:
            raise UserError(f"{out} already holds embeddings made differently ({name}: {'; '.join(diffs)}); "
                            f"give another --out or delete that folder")


def _autocast(precision: str, device):
    import contextlib

    import torch

    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Embedder:
    """Collects samples into batches, runs the teacher, and hands each sample's result to its shard's writer."""

    def __init__(self, teacher, device, precision, batch_size, views):
        self.teacher, self.device, self.precision = teacher, device, precision
        self.batch_size, self.views = batch_size, views
        self.pending: list = []

    def add(self, item) -> bool:
        self.pending.append(item)
        return len(self.pending) >= self.batch_size

    def flush(self):
        """[(item, image_emb [K, D] numpy, text_emb [D] numpy)] for the pending samples."""
        import torch

        if not self.pending:
            return []
        items, self.pending = self.pending, []
        images = torch.cat([it["images"] for it in items]).to(self.device, non_blocking=True)
        tokens = torch.stack([it["tokens"] for it in items]).to(self.device, non_blocking=True)
        with _autocast(self.precision, self.device):
            img = self.teacher.encode_image(images).float()
            txt = self.teacher.encode_text(tokens).float()
        img = img.view(len(items), self.views, -1).cpu().numpy()
        txt = txt.cpu().numpy()
        return [(it, img[i], txt[i]) for i, it in enumerate(items)]


def embed_shards(cfg: Config) -> Optional[str]:
    """Embed this rank's unfinished shards; rank 0 then writes cache.json. Returns rank 0's summary line."""
    import time
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from .. import config as config_lib
    from ..rdm import zeroshot as rdm_zeroshot
    from ..data import cache as cache_lib
    from ..data.augment import AugmentSettings
    from ..data.shards import BadSampleStats, count_samples, expand_urls
    from ..engine.distributed import barrier, cleanup, init_distributed
    from ..errors import DataError, UserError
    from ..towers import load_teacher

    urls = expand_urls(cfg.train_data)
    names = [cache_lib.sibling_name(u) for u in urls]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two source shards are both named {dup}; cache shards are named after their source, "
                        f"so embed sources with clashing names into separate --out folders")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = init_distributed(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = cfg.precision if cfg.precision != "auto" else ("amp" if env.device.type == "cuda" else "fp32")
    torch.manual_seed(0)  # a teacher without weights (tests, demo) is then the same on every rank and restart
    teacher = load_teacher(cfg.teacher, cfg.pretrained, device=env.device, normalize=cfg.normalize)
    augment = AugmentSettings(views=cfg.augmentations, scale=tuple(cfg.aug_scale), seed=cfg.aug_seed)
    settings = _teacher_settings(cfg, teacher, augment)
    _refuse_other_settings(out, settings)
    zeroshot_path = out / rdm_zeroshot.FILE_NAME
    zeroshot_set = None
    if cfg.zeroshot_root and not rdm_zeroshot.is_done(zeroshot_path, settings, cfg.zeroshot_dataset,
                                                      cfg.zeroshot_root):
        # built on every rank before any embedding, so that a bad set stops all ranks at once
        zeroshot_set = rdm_zeroshot.build_zeroshot_dataset(cfg.zeroshot_dataset, cfg.zeroshot_root, teacher.preprocess)
    if env.is_main:
        config_lib.save(cfg, out / "embed_config.yaml")

    # Shards are dealt to ranks by position in the full list, so a restart gives each rank the same ones.
    mine = [u for i, u in enumerate(urls) if i % env.world_size == env.rank]
    todo = [u for u in mine if cache_lib.read_done_marker(out, cache_lib.sibling_name(u)) is None]
    for u in todo:  # leftovers of a killed run
        for stale in out.glob(f"{cache_lib.sibling_name(u)}{cache_lib.TMP_MARK}*"):
            stale.unlink()

    loader = torch.utils.data.DataLoader(
        __getattr__("ShardInputs")(todo, teacher.preprocess, teacher.tokenizer, augment),
        batch_size=None, num_workers=min(cfg.workers, len(todo)), pin_memory=env.device.type == "cuda")
    embedder = _Embedder(teacher, env.device, precision, cfg.batch_size, cfg.augmentations)
    writers: dict = {}
    done_here = []
    expected = count_samples(todo) if todo else 0
    bar = tqdm(total=expected, unit="sample", disable=not env.is_main or not todo, dynamic_ncols=True,
               desc=f"embed rank {env.rank}" if env.distributed else "embed")
    start = time.time()

    def write(results):
        for item, img, txt in results:
            url = item["url"]
            if url not in writers:
                writers[url] = cache_lib.SiblingShardWriter(out, cache_lib.sibling_name(url), cfg.dtype)
            writers[url].write(item["key"], img, txt, item["paug"])
        bar.update(len(results))

    try:
        for item in loader:
            if item.get("end"):
                write(embedder.flush())  # the shard's last samples must be in before it is committed
                url = item["url"]
                writer = writers.pop(url, None) or cache_lib.SiblingShardWriter(out, cache_lib.sibling_name(url),
                                                                                 cfg.dtype)
                stats = item["stats"]
                done_here.append(writer.commit({"source": url, "skipped": stats["bad"], "stats": stats,
                                                "settings": settings}))
            elif embedder.add(item):
                write(embedder.flush())
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        bar.close()
    if writers:  # a shard without its end marker means the loader lost it: never commit it
        raise DataError(f"data loading stopped before the end of {next(iter(writers))}")
    elapsed = time.time() - start
    n_here = sum(d["count"] for d in done_here)
    print(f"rank {env.rank}: embedded {n_here} samples from {len(done_here)} shards in {elapsed:.1f}s "
          f"({n_here / max(elapsed, 1e-9):.1f} samples/s); {len(mine) - len(todo)} shards were already complete",
          flush=True)

    barrier(env)
    summary = None
    if env.is_main:
        markers = []
        for u in urls:
            marker = cache_lib.read_done_marker(out, cache_lib.sibling_name(u))
            if marker is None:
                raise DataError(f"cache shard for {u} is missing after all ranks finished; re-run the same command")
            markers.append(marker)
        meta = cache_lib.write_cache_meta(out, settings, markers)
        bad = BadSampleStats()
        for m in markers:
            bad.merge(m.get("stats", {}))
        summary = (f"cache {out}: {meta['num_samples']} samples in {len(markers)} shards, "
                   f"{meta['bytes'] / 1e6:.1f} MB ({meta['bytes'] / max(meta['num_samples'], 1):.0f} bytes/sample); "
                   f"{bad.summary()}; this run embedded {len(done_here)} shards")
        if not meta["num_samples"]:
            raise DataError(f"no usable sample in {cfg.train_data}: {bad.summary()}")
        if zeroshot_set is not None:
            payload = rdm_zeroshot.embed_zeroshot_set(
                teacher, cfg.zeroshot_dataset, cfg.zeroshot_root, settings=settings, batch_size=cfg.batch_size,
                workers=cfg.workers, device=env.device, autocast=lambda: _autocast(precision, env.device),
                built=zeroshot_set)
            rdm_zeroshot.write_zeroshot_eval(zeroshot_path, payload)
            summary += (f"; zero-shot set {cfg.zeroshot_root}: {len(payload['labels'])} images, "
                        f"{len(payload['classnames'])} classes x {len(payload['templates'])} templates "
                        f"in {zeroshot_path.name}")
        elif cfg.zeroshot_root:
            summary += f"; {zeroshot_path.name} was already complete"
    barrier(env)
    cleanup(env)
    return summary
