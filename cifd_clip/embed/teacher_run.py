"""The embed stage's work: run the frozen teacher once over the shards and write the embedding cache.

Each rank embeds its own shards (dealt by position, so a restart gives each rank the same ones); loader
workers decode and preprocess whole shards, the main process batches samples through the teacher and hands
each result to its shard's writer, and a shard is committed only after its last sample. Rank 0 then writes
cache.json and, when asked, the zero-shot eval file (see `cifd_clip.evaluation.cached_zeroshot`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import IterableDataset

from ..data.shards import BadSampleStats, count_samples, expand_urls, iter_samples
from ..engine.distributed import barrier, cleanup, init_distributed
from ..engine.precision import autocast, resolve_precision
from ..errors import DataError, UserError
from ..output_checks import check_folder_target, check_free_space, hold_run_lock
from ..data import embedding_cache as cache_lib
from ..data.augment import AugmentSettings, apply_params, sample_views

# ---------------------------------------------------------------- data side (runs in loader workers)


CHUNK = 16  # samples per item a loader worker sends: one shared-memory transfer of their images and tokens


class ShardInputs(IterableDataset):
    """This rank's shards as teacher inputs: per sample {"url", "key", "images" [K, 3, H, W], "paug", "tokens"}, then
    an end-of-shard item {"url", "end", "stats"}; a loader worker's items come after all of its shard's samples.

    Each loader worker reads whole shards (shard i goes to worker i % workers), so a shard's samples keep their
    order and its end marker comes after all of them. Items travel in chunks of `chunk` (`iterate_items` unpacks
    them in the order the loader would give single items): a sample's tensors sent alone would cost a
    shared-memory segment and a file-descriptor hand-over each.
    """

    def __init__(self, urls, preprocess, tokenizer, augment, chunk: int = CHUNK):
        self.urls, self.preprocess, self.tokenizer, self.augment = list(urls), preprocess, tokenizer, augment
        self.chunk = max(1, int(chunk))

    def items(self, urls):
        for url in urls:
            stats = BadSampleStats()
            for sample in iter_samples([url], stats=stats):
                image = sample["image"]
                params = sample_views(self.augment, sample["key"], *image.size)
                views = torch.stack([self.preprocess(apply_params(image, p)) for p in params])
                yield {"url": url, "key": sample["key"], "images": views, "paug": params,
                       "tokens": self.tokenizer([sample["text"]])[0]}
            yield {"url": url, "end": True, "stats": stats.to_dict()}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        mine = self.urls[info.id::info.num_workers] if info is not None else self.urls
        pending: list = []
        for item in self.items(mine):
            pending.append(item)
            if len(pending) >= self.chunk:
                yield _pack(worker, pending, last=False)
                pending = []
        yield _pack(worker, pending, last=True)


def _pack(worker: int, items: list, last: bool) -> dict:
    """Items → one chunk: the samples' images and tokens concatenated (one tensor each), the rest as is."""
    samples = [it for it in items if "images" in it]
    chunk = {"worker": worker, "last": last, "images": None, "tokens": None,
             "items": [{k: v for k, v in it.items() if k not in ("images", "tokens")} for it in items]}
    if samples:
        chunk["images"] = torch.cat([it["images"] for it in samples])
        chunk["tokens"] = torch.stack([it["tokens"] for it in samples])
        chunk["views"] = [len(it["images"]) for it in samples]
    return chunk


def _unpack(chunk: dict) -> list:
    out, i, row = [], 0, 0
    for item in chunk["items"]:
        if "end" not in item:
            k = chunk["views"][i]
            item = dict(item, images=chunk["images"][row:row + k], tokens=chunk["tokens"][i])
            i, row = i + 1, row + k
        out.append(item)
    return out


def iterate_items(loader, workers: int):
    """The items of `loader`'s chunks, in the order a DataLoader over single items would give them: round-robin
    over the workers one item at a time, a worker leaving the turn once its items are done (so the teacher's
    batches, and the cache's bytes, do not depend on the chunking)."""
    chunks = iter(loader)
    queues: dict = {w: [] for w in range(max(workers, 1))}
    finished: set = set()

    def fill(worker: int) -> None:
        while not queues[worker] and worker not in finished:
            chunk = next(chunks)  # chunks come round-robin too: at most one per other worker is held here
            queues[chunk["worker"]].extend(_unpack(chunk))
            if chunk["last"]:
                queues[chunk["worker"]].append(None)

    turn = 0
    while len(finished) < len(queues):
        worker = turn % len(queues)
        turn += 1
        if worker in finished:
            continue
        fill(worker)
        item = queues[worker].pop(0)
        if item is None:
            finished.add(worker)
            continue
        yield item


class _AsyncWriter:
    """Writes results into the cache shards in a thread of its own, in the order they were handed over, so that
    the teacher's next batch runs while the last one is encoded and written. An error there is raised in the
    caller at its next call."""

    def __init__(self, write, commit):
        import queue
        import threading

        self._write, self._commit = write, commit
        self._queue: "queue.Queue" = queue.Queue(maxsize=8)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            if self._error is not None:
                continue  # drain: the caller raises the first error
            kind, payload = task
            try:
                (self._write if kind == "write" else self._commit)(payload)
            except BaseException as e:  # handed to the caller
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, results) -> None:
        self._check()
        if results:
            self._queue.put(("write", results))

    def commit(self, end_item) -> None:
        self._check()
        self._queue.put(("commit", end_item))

    def close(self, raise_error: bool = True) -> None:
        """Wait for everything handed over; raise the writer's error if it had one (and `raise_error`)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error:
            self._check()


# ---------------------------------------------------------------- teacher side


def _teacher_settings(cfg, teacher, augment) -> dict:
    from ..clip_models import weights_fingerprint

    tower = teacher.tower
    return cache_lib.make_settings(
        teacher_spec=cfg.teacher, teacher_pretrained=cfg.teacher_pretrained, teacher_model_name=tower.model_name,
        teacher_fingerprint=weights_fingerprint(tower.model),
        teacher_image_size=tower.model_cfg.get("vision_cfg", {}).get("image_size"),
        image_dim=tower.embed_dim, text_dim=tower.embed_dim, dtype=cfg.dtype, normalized=cfg.normalize,
        augmentation=augment.to_dict(), teacher_logit_scale=float(tower.model.logit_scale.detach().exp()))


def source_identity(url: str) -> dict:
    """What makes a finished cache shard belong to its source: the source file's absolute path, size and
    modification time (a changed, replaced or other file with the same name is not the same source)."""
    path = Path(url)
    stat = path.stat() if path.is_file() else None
    return {"path": str(path.resolve()), "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None}


def _is_done(out: Path, url: str) -> bool:
    """A complete cache shard of exactly this source; one of another source is refused (--overwrite redoes it)."""
    name = cache_lib.sibling_name(url)
    done = cache_lib.read_done_marker(out, name)
    if done is None:
        return False
    recorded = done.get("source_file") or {"path": str(Path(done.get("source", "")).resolve())}
    current = source_identity(url)
    if any(recorded.get(k) is not None and recorded.get(k) != current[k] for k in ("path", "size", "mtime_ns")):
        what = "another file" if recorded.get("path") != current["path"] else "this file before it changed"
        raise UserError(f"{out / name} holds the embeddings of {what} ({recorded.get('path')}), not of {url}; pass "
                        f"--overwrite to embed everything again, or write this data to another --out")
    return True


def _refuse_other_shards(out: Path, names: list[str]) -> None:
    """A cache holds one shard set: finished shards of another set would be mixed into this one."""
    wanted = set(names)
    others = sorted(m.name[:-len(cache_lib.DONE_SUFFIX)] for m in out.glob(f"*.tar{cache_lib.DONE_SUFFIX}")
                    if m.name[:-len(cache_lib.DONE_SUFFIX)] not in wanted)
    if others:
        raise UserError(f"{out} also holds embeddings of other shards ({others[0]}{' ...' if len(others) > 1 else ''}) "
                        f"than --train-data names; pass --overwrite to replace the whole cache, or use another --out")


def _remove_cache_files(out: Path) -> None:
    if not out.is_dir():
        return
    from ..evaluation import cached_zeroshot

    for path in [*out.glob("*.tar"), *out.glob(f"*.tar{cache_lib.DONE_SUFFIX}"), out / cache_lib.META_FILE,
                 out / cached_zeroshot.FILE_NAME]:
        path.unlink(missing_ok=True)


def _check_space(out: Path, urls: list, todo: list, settings: dict) -> None:
    count = count_samples(todo) if todo else 0
    if count:
        width = settings["augmentation"]["views"] * settings["image_dim"] + settings["text_dim"]
        per_sample = width * (2 if settings["dtype"] == "float16" else 4) + 1536  # + tar headers of 2-3 members
        check_free_space(out, count * per_sample, f"the embeddings of {count} samples")


def _refuse_other_settings(out, settings: dict) -> None:
    """A cache folder holds embeddings of one teacher and one set of settings, finished or not."""

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
        if not self.pending:
            return []
        items, self.pending = self.pending, []
        images = torch.cat([it["images"] for it in items]).to(self.device, non_blocking=True)
        tokens = torch.stack([it["tokens"] for it in items]).to(self.device, non_blocking=True)
        with autocast(self.precision, self.device):
            img = self.teacher.encode_image(images).float()
            txt = self.teacher.encode_text(tokens).float()
        img = img.view(len(items), self.views, -1).cpu().numpy()
        txt = txt.cpu().numpy()
        return [(it, img[i], txt[i]) for i, it in enumerate(items)]


GPU_WORKERS = 4


def embed_workers(workers: Optional[int], device: torch.device) -> int:
    """--workers, or its default: on a GPU, loader workers decode while the teacher runs; on a CPU they take cores
    from the teacher's own threads, and decoding in the main process is faster (bench_embed: 0.91x the bare
    forward with 0 workers, 0.85x with 1, on 2 cores)."""
    if workers is not None:
        return workers
    return GPU_WORKERS if device.type == "cuda" else 0


def _source_urls(cfg) -> tuple[list, list]:
    """The source shards (after a CSV source is sharded) and the cache shard names they give; refuses clashes."""
    from ..data.csv_source import resolve_csv_train_data, world_size_from_env

    resolve_csv_train_data(cfg, world_size_from_env())
    urls = expand_urls(cfg.train_data)
    names = [cache_lib.sibling_name(u) for u in urls]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two source shards are both named {dup}; cache shards are named after their source, "
                        f"so embed sources with clashing names into separate --out folders")
    return urls, names


def _embed_todo(cfg, out: Path, todo: list, teacher, augment, settings, env, precision) -> list:
    """Embed the shards in `todo`, each committed once its last sample is written; returns their done markers."""
    from tqdm import tqdm

    workers = min(embed_workers(cfg.workers, env.device), len(todo))
    loader = torch.utils.data.DataLoader(
        ShardInputs(todo, teacher.preprocess, teacher.tokenizer, augment),
        batch_size=None, num_workers=workers, pin_memory=env.device.type == "cuda")
    embedder = _Embedder(teacher, env.device, precision, cfg.batch_size, cfg.augmentations)
    writers: dict = {}
    done_here = []
    expected = count_samples(todo) if todo else 0
    bar = tqdm(total=expected, unit="sample", disable=not env.is_main or not todo, dynamic_ncols=True,
               desc=f"embed rank {env.rank}" if env.distributed else "embed")

    def write(results):  # in the writer thread
        for item, img, txt in results:
            url = item["url"]
            if url not in writers:
                writers[url] = cache_lib.SiblingShardWriter(out, cache_lib.sibling_name(url), cfg.dtype)
            writers[url].write(item["key"], img, txt, item["paug"])

    def commit(item):  # in the writer thread, after the shard's last write
        url = item["url"]
        writer = writers.pop(url, None) or cache_lib.SiblingShardWriter(out, cache_lib.sibling_name(url), cfg.dtype)
        stats = item["stats"]
        done_here.append(writer.commit({"source": url, "source_file": source_identity(url), "skipped": stats["bad"],
                                        "stats": stats, "settings": settings}))

    writer_thread = _AsyncWriter(write, commit)

    def hand_over(results):
        writer_thread.write(results)
        bar.update(len(results))

    try:
        for item in iterate_items(loader, workers):
            if item.get("end"):
                hand_over(embedder.flush())  # the shard's last samples must be in before it is committed
                writer_thread.commit(item)
            elif embedder.add(item):
                hand_over(embedder.flush())
        writer_thread.close()
    except BaseException:
        writer_thread.close(raise_error=False)  # the thread is done with the writers before they are aborted
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        bar.close()
    if writers:  # a shard without its end marker means the loader lost it: never commit it
        raise DataError(f"data loading stopped before the end of {next(iter(writers))}")
    return done_here


def _finish_cache(cfg, out: Path, urls: list, settings, done_here: list, teacher, zeroshot_set, env,
                  precision) -> str:
    """Rank 0, after every rank is done: cache.json from all shards' markers, then the zero-shot set."""
    from ..evaluation import cached_zeroshot

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
    zeroshot_path = out / cached_zeroshot.FILE_NAME
    if zeroshot_set is not None:
        payload = cached_zeroshot.embed_zeroshot_set(
            teacher, cfg.zeroshot_dataset, cfg.zeroshot_root, settings=settings, batch_size=cfg.batch_size,
            workers=embed_workers(cfg.workers, env.device), device=env.device,
            autocast=lambda: autocast(precision, env.device), built=zeroshot_set)
        cached_zeroshot.write_zeroshot_eval(zeroshot_path, payload)
        summary += (f"; zero-shot set {cfg.zeroshot_root}: {len(payload['labels'])} images, "
                    f"{len(payload['classnames'])} classes x {len(payload['templates'])} templates "
                    f"in {zeroshot_path.name}")
    elif cfg.zeroshot_root:
        summary += f"; {zeroshot_path.name} was already complete"
    return summary


def embed_shards(cfg) -> Optional[str]:
    """Embed this rank's unfinished shards; rank 0 then writes cache.json. Returns rank 0's summary line."""
    from .. import config as config_lib
    from ..evaluation import cached_zeroshot
    from ..clip_models import load_teacher

    urls, names = _source_urls(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = check_folder_target(cfg.out, "--out")
    env = init_distributed(cfg.device)
    if env.is_main:
        hold_run_lock(out, "cache folder")
        if cfg.overwrite:
            _remove_cache_files(out)
    barrier(env)
    out.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(cfg.precision, env.device)
    torch.manual_seed(0)  # a teacher without weights (tests, demo) is then the same on every rank and restart
    teacher = load_teacher(cfg.teacher, cfg.teacher_pretrained, device=env.device, normalize=cfg.normalize,
                           cache_dir=getattr(cfg, "cache_dir", None))
    augment = AugmentSettings(views=cfg.augmentations, scale=tuple(cfg.aug_scale), seed=cfg.aug_seed)
    settings = _teacher_settings(cfg, teacher, augment)
    _refuse_other_settings(out, settings)
    zeroshot_set = None
    if cfg.zeroshot_root and not cached_zeroshot.is_done(out / cached_zeroshot.FILE_NAME, settings, cfg.zeroshot_dataset,
                                                      cfg.zeroshot_root):
        # built on every rank before any embedding, so that a bad set stops all ranks at once
        zeroshot_set = cached_zeroshot.build_zeroshot_dataset(cfg.zeroshot_dataset, cfg.zeroshot_root, teacher.preprocess)

    if env.is_main:
        _refuse_other_shards(out, names)
    # Shards are dealt to ranks by position in the full list, so a restart gives each rank the same ones.
    mine = [u for i, u in enumerate(urls) if i % env.world_size == env.rank]
    todo = [u for u in mine if not _is_done(out, u)]
    if env.is_main:
        _check_space(out, urls, todo, settings)
        config_lib.save(cfg, out / "embed_config.yaml")
    for u in todo:  # leftovers of a killed run
        for stale in out.glob(f"{cache_lib.sibling_name(u)}{cache_lib.TMP_MARK}*"):
            stale.unlink()

    start = time.time()
    done_here = _embed_todo(cfg, out, todo, teacher, augment, settings, env, precision)
    elapsed = time.time() - start
    n_here = sum(d["count"] for d in done_here)
    print(f"rank {env.rank}: embedded {n_here} samples from {len(done_here)} shards in {elapsed:.1f}s "
          f"({n_here / max(elapsed, 1e-9):.1f} samples/s); {len(mine) - len(todo)} shards were already complete",
          flush=True)

    barrier(env)
    summary = None
    if env.is_main:
        summary = _finish_cache(cfg, out, urls, settings, done_here, teacher, zeroshot_set, env, precision)
    barrier(env)
    cleanup(env)
    return summary
