"""Teacher-embedding cache: sibling shards of teacher outputs, joined to the source shards by key.

Layout of a cache folder (see docs/cache.md):
  cache.json          dataset-level metadata: teacher spec and weights fingerprint, dims, dtype,
                      normalised or not, augmentation settings, per-shard counts, format version
  NAME.tar            one sibling shard per source shard NAME.tar, same keys in the same order, members
                        KEY.t_img.npy   [K, D_img] teacher image embeddings of K views (view 0 = plain image)
                        KEY.t_txt.npy   [D_txt]    teacher text embedding of the caption
                        KEY.paug.json   (K > 1 only) [[x0, y0, w, h, flip], ...] to replay each view
  NAME.tar.json       written last for each shard: marks it complete (count, skipped, bytes, settings)

Readers:
  - `read_cache_meta` / `check_cache_compatible`: refuse a cache made by another teacher or settings.
  - `CacheJoin`: a data-loader sample stage that adds a sample's cached embeddings (training with images).
  - `iter_cached_embeddings`: batches of embeddings straight from the cache, no image decoded (RDM training).
"""
from __future__ import annotations

import io
import json
import math
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from ..errors import DataError, UserError
from ..file_io import check_format, read_json_file, write_text_atomic
from .augment import IDENTITY, apply_params, is_identity, key_rng

FORMAT = "cifd-clip-embedding-cache"
FORMAT_VERSION = 1
META_FILE = "cache.json"
IMAGE_MEMBER, TEXT_MEMBER, PAUG_MEMBER = "t_img.npy", "t_txt.npy", "paug.json"
# a classifier teacher's cache (cls-embed): pooled features in t_img.npy, and per sample
LOGITS_MEMBER, LABEL_MEMBER = "t_logits.npy", "cls"  # [K, C] logits of each view, the label
DONE_SUFFIX = ".json"  # NAME.tar.json marks NAME.tar complete
TMP_MARK = ".tmp-"
DTYPES = ("float16", "float32")

# Settings that must agree between a cache and whoever reads or extends it (the teacher spec string
# may differ, e.g. after moving the weights file, as long as the weights fingerprint is the same).
_UNRECORDED = {"kind": "clip"}  # what a cache written before a setting existed meant by it
COMPARED_SETTINGS = ("format_version", "teacher_fingerprint", "image_dim", "text_dim", "dtype", "normalized",
                     "augmentation", "kind", "dataset")


def sibling_name(url: str) -> str:
    """The cache shard name for a source shard: its basename (`.../00012.tar` -> `00012.tar`)."""
    name = os.path.basename(str(url).rstrip("/"))
    if not name:
        raise UserError(f"cannot name a cache shard after source {url!r}")
    return name


def make_settings(*, teacher_spec: str, teacher_pretrained: Optional[str], teacher_model_name: str,
                  teacher_fingerprint: str, teacher_image_size, image_dim: int, text_dim: int, dtype: str,
                  normalized: bool, augmentation: dict, teacher_logit_scale: Optional[float] = None,
                  kind: str = "clip", num_classes: Optional[int] = None, dataset: Optional[dict] = None) -> dict:
    """The part of cache.json that describes how the embeddings were made."""
    if dtype not in DTYPES:
        raise UserError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "teacher": {"spec": teacher_spec, "pretrained": teacher_pretrained, "model_name": teacher_model_name,
                    "image_size": teacher_image_size},
        "teacher_fingerprint": teacher_fingerprint,
        "image_dim": int(image_dim),
        "text_dim": int(text_dim),
        "dtype": dtype,
        "normalized": bool(normalized),
        "augmentation": dict(augmentation),
        # exp of the teacher's learned logit scale: the affinity baselines weigh its batch logits with it
        "teacher_logit_scale": None if teacher_logit_scale is None else float(teacher_logit_scale),
        # "classification": a classifier's pooled features (image_dim), logits and labels; no captions
        "kind": kind, "num_classes": num_classes, "dataset": dataset,
    }


def settings_differences(have: dict, want: dict) -> list[str]:
    """Human-readable differences between two settings dicts on the keys that matter."""
    out = []
    for key in COMPARED_SETTINGS:
        if key in want and have.get(key, _UNRECORDED.get(key)) != want.get(key):
            label = {"teacher_fingerprint": "teacher weights fingerprint"}.get(key, key.replace("_", " "))
            out.append(f"{label} is {have.get(key)!r} in the cache but {want.get(key)!r} here")
    return out


# ---------------------------------------------------------------- writing


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class SiblingShardWriter:
    """Writes one cache shard to a temporary name; `commit()` renames it and then writes its done-marker.

    A killed writer leaves only `NAME.tar.tmp-PID`, which no reader looks at and the next run overwrites.
    """

    def __init__(self, cache_dir: str | os.PathLike, name: str, dtype: str):
        import webdataset as wds

        self.cache_dir = Path(cache_dir)
        self.name = name
        self.dtype = np.dtype(dtype)
        self.path = self.cache_dir / name
        self.tmp_path = self.cache_dir / f"{name}{TMP_MARK}{os.getpid()}"
        self._file = open(self.tmp_path, "wb")
        # mtime=0 makes the bytes depend only on the contents: a resumed run equals an uninterrupted one.
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0)
        self.count = 0

    def write(self, key: str, image_emb: np.ndarray, text_emb: Optional[np.ndarray], paug: Optional[np.ndarray] = None,
              logits: Optional[np.ndarray] = None, label: Optional[int] = None) -> None:
        """image_emb [K, D_img], text_emb [D_txt] (CLIP) or logits [K, C] and label (classifier), paug [K, 5]
        (stored only when K > 1)."""
        sample = {"__key__": key, IMAGE_MEMBER: _npy_bytes(np.asarray(image_emb, dtype=self.dtype))}
        if text_emb is not None:
            sample[TEXT_MEMBER] = _npy_bytes(np.asarray(text_emb, dtype=self.dtype))
        if logits is not None:
            sample[LOGITS_MEMBER] = _npy_bytes(np.asarray(logits, dtype=np.float32))
        if label is not None:
            sample[LABEL_MEMBER] = str(int(label)).encode()
        if image_emb.shape[0] > 1:
            sample[PAUG_MEMBER] = json.dumps([[round(float(v), 6) for v in row] for row in paug]).encode()
        self._tar.write(sample)
        self.count += 1

    def commit(self, info: dict) -> dict:
        """Finish the shard atomically; `info` (source, skipped, settings...) goes into its done-marker."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())  # written incrementally, so not through file_io.write_atomic
        self._file.close()
        os.replace(self.tmp_path, self.path)
        done = dict(info, name=self.name, count=self.count, bytes=self.path.stat().st_size)
        write_text_atomic(done_marker(self.cache_dir, self.name), json.dumps(done, indent=1))
        return done

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def done_marker(cache_dir: str | os.PathLike, name: str) -> Path:
    return Path(cache_dir) / f"{name}{DONE_SUFFIX}"


def read_done_marker(cache_dir: str | os.PathLike, name: str) -> Optional[dict]:
    """The done-marker of a complete cache shard, or None if the shard is missing or incomplete."""
    marker, shard = done_marker(cache_dir, name), Path(cache_dir) / name
    if not marker.is_file() or not shard.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if not isinstance(done, dict) or done.get("bytes") != shard.stat().st_size:
        return None
    return done


def write_cache_meta(cache_dir: str | os.PathLike, settings: dict, shards: list[dict]) -> dict:
    """Write cache.json from the settings and the done-markers of all shards (in source order)."""
    meta = dict(settings)
    meta["shards"] = [{k: d[k] for k in ("name", "source", "count", "skipped", "bytes")} for d in shards]
    meta["num_samples"] = sum(d["count"] for d in shards)
    meta["num_skipped"] = sum(d["skipped"] for d in shards)
    meta["bytes"] = sum(d["bytes"] for d in shards)
    write_text_atomic(Path(cache_dir) / META_FILE, json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------- metadata checks


def read_cache_meta(cache_dir: str | os.PathLike) -> dict:
    """cache.json of a finished cache; UserError if the folder is not one (or a newer format)."""
    cache_dir = Path(cache_dir)
    path = cache_dir / META_FILE
    if cache_dir.is_file():
        raise UserError(f"embedding cache {cache_dir} is a file; give the folder cifd-clip embed wrote")
    if not cache_dir.is_dir():
        raise UserError(f"embedding cache {cache_dir} does not exist")
    if not path.is_file():
        raise UserError(f"{cache_dir} is not a finished embedding cache (no {META_FILE}); run or resume cifd-clip embed")
    meta = read_json_file(path, "embedding cache description")
    check_format(meta, path, "a cifd-clip embedding cache description", FORMAT, FORMAT_VERSION,
                 remedy="re-run cifd-clip embed")
    meta["cache_dir"] = str(cache_dir)
    return meta


def check_cache_compatible(meta: dict, *, teacher_fingerprint: Optional[str] = None,
                           image_dim: Optional[int] = None, text_dim: Optional[int] = None,
                           normalized: Optional[bool] = None, dtype: Optional[str] = None,
                           views: Optional[int] = None, augmentation: Optional[dict] = None) -> None:
    """Raise UserError naming every difference between the cache and what the caller expects.

    Pass only what you know: arguments left as None are not checked.
    """
    want = {"teacher_fingerprint": teacher_fingerprint, "image_dim": image_dim, "text_dim": text_dim,
            "normalized": normalized, "dtype": dtype, "augmentation": augmentation}
    diffs = settings_differences(meta, {k: v for k, v in want.items() if v is not None})
    if views is not None and meta.get("augmentation", {}).get("views") != views:
        diffs.append(f"augmented views per sample are {meta.get('augmentation', {}).get('views')} in the cache "
                     f"but {views} here")
    if diffs:
        where = meta.get("cache_dir", "the embedding cache")
        raise UserError(f"embedding cache {where} does not fit this run: " + "; ".join(diffs))


# ---------------------------------------------------------------- reading


@dataclass
class CachedShard:
    """All embeddings of one cache shard (as stored: float16 or float32)."""

    name: str
    keys: list
    image_emb: np.ndarray  # [N, K, D_img]
    text_emb: Optional[np.ndarray]  # [N, D_txt] (CLIP caches)
    paug: Optional[np.ndarray]  # [N, K, 5] or None when K == 1

    def __post_init__(self):
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.logits: Optional[np.ndarray] = None  # [N, K, C] (classifier caches)
        self.labels: Optional[np.ndarray] = None  # [N]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.image_emb, self.text_emb, self.paug, self.logits) if a is not None)


def _read_members(path: Path) -> "OrderedDict[str, dict]":
    """{key: {ext: bytes}} of a cache shard, in file order. The file is read whole and its members sliced out of
    it (ustar headers parsed here, checksums checked); anything else in the tar (pax or GNU headers, links)
    goes through `tarfile`."""
    data = path.read_bytes()
    members: "OrderedDict[str, dict]" = OrderedDict()
    pos, end = 0, len(data)
    while pos + 512 <= end:
        header = data[pos:pos + 512]
        if header.count(0) == 512:  # end-of-archive blocks
            return members
        kind = header[156:157]
        if header[257:263] not in (b"ustar\x00", b"ustar ") or kind not in (b"0", b"\x00") or \
                int(header[148:156].split(b"\x00", 1)[0].strip() or b"0", 8) != \
                sum(header[:148]) + 256 + sum(header[156:]):
            return _read_members_tarfile(path, data)
        size = int(header[124:136].split(b"\x00", 1)[0].strip() or b"0", 8)
        name = header[:100].split(b"\x00", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\x00", 1)[0].decode("utf-8")
        if prefix:
            name = f"{prefix}/{name}"
        pos += 512
        if pos + size > end:
            raise tarfile.ReadError("unexpected end of data")
        key, _, ext = name.partition(".")
        members.setdefault(key, {})[ext] = data[pos:pos + size]
        pos += (size + 511) // 512 * 512
    if pos != end and data[pos:].count(0) != end - pos:
        raise tarfile.ReadError("unexpected end of data")
    return members


def _read_members_tarfile(path: Path, data: bytes) -> "OrderedDict[str, dict]":
    members: "OrderedDict[str, dict]" = OrderedDict()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = data[info.offset_data:info.offset_data + info.size]
    return members


def _stack_npy(blobs: list) -> np.ndarray:
    """np.stack of the .npy files in `blobs`; when they all share one header (same dtype and shape, as a cache
    shard's members do) their data is read in one go instead of file by file."""
    first = io.BytesIO(blobs[0])
    version = np.lib.format.read_magic(first)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(first)
    offset = first.tell()
    head = blobs[0][:offset]
    size = dtype.itemsize * math.prod(shape)
    if fortran or dtype.hasobject or any(len(b) != offset + size or b[:offset] != head for b in blobs):
        return np.stack([np.load(io.BytesIO(b), allow_pickle=False) for b in blobs])
    joined = bytearray().join(memoryview(b)[offset:] for b in blobs)  # writable, like np.load's arrays
    return np.frombuffer(joined, dtype=dtype).reshape(len(blobs), *shape)


def read_cached_shard(cache_dir: str | os.PathLike, name: str, *, expected_count: Optional[int] = None,
                      views: Optional[int] = None) -> CachedShard:
    """Load one cache shard fully; DataError if it is unreadable, incomplete or has the wrong count."""
    path = Path(cache_dir) / name
    try:
        members = _read_members(path)
    except FileNotFoundError:
        raise DataError(f"cache shard {path} is missing; re-run cifd-clip embed to complete the cache") from None
    except (tarfile.TarError, OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cache shard {path} is unreadable ({e}); delete it and re-run cifd-clip embed") from None
    keys, images, texts, paugs, logits, labels = [], [], [], [], [], []
    for key, m in members.items():
        if IMAGE_MEMBER not in m or (TEXT_MEMBER not in m and LOGITS_MEMBER not in m):
            raise DataError(f"cache shard {path} sample {key} lacks {IMAGE_MEMBER} or {TEXT_MEMBER}/{LOGITS_MEMBER}")
        keys.append(key)
        images.append(m[IMAGE_MEMBER])
        if TEXT_MEMBER in m:
            texts.append(m[TEXT_MEMBER])
        if LOGITS_MEMBER in m:
            logits.append(m[LOGITS_MEMBER])
        if LABEL_MEMBER in m:
            labels.append(int(m[LABEL_MEMBER]))
        if PAUG_MEMBER in m:
            paugs.append(np.asarray(json.loads(m[PAUG_MEMBER]), dtype=np.float32))
    if expected_count is not None and len(keys) != expected_count:
        raise DataError(f"cache shard {path} holds {len(keys)} samples but cache.json says {expected_count}; "
                        f"re-run cifd-clip embed")
    if not keys:
        return CachedShard(name, [], np.zeros((0, views or 1, 0), np.float16), np.zeros((0, 0), np.float16), None)
    try:
        image_emb = _stack_npy(images)
        text_emb = _stack_npy(texts) if texts else None
        logits_arr = _stack_npy(logits) if len(logits) == len(keys) else None
    except ValueError:  # a damaged .npy member, or members of different shapes
        raise DataError(f"cache shard {path} is unreadable (a damaged .npy member, or members of different shapes); "
                        f"delete it and re-run cifd-clip embed") from None
    if views is not None and image_emb.shape[1] != views:
        raise DataError(f"cache shard {path} stores {image_emb.shape[1]} views per sample but cache.json says {views}")
    paug = np.stack(paugs) if len(paugs) == len(keys) and image_emb.shape[1] > 1 else None
    shard = CachedShard(name, keys, image_emb, text_emb, paug)
    shard.logits = logits_arr
    shard.labels = np.asarray(labels, dtype=np.int64) if len(labels) == len(keys) else None
    return shard


class CacheJoin:
    """Data-loader sample stage: adds a sample's teacher embeddings from the cache, found by its key.

    Adds `t_image_emb` [D_img] and `t_text_emb` [D_txt] (float32 numpy) and `paug` [5] (the chosen view's
    crop box + flip, float32). With `view="random"` one of the K cached views is drawn per sample from
    (seed, epoch, key) — the training stream calls `set_epoch` at each epoch, in the worker that runs the
    stage; `view=None` means random when K > 1, else the plain image. When `replay=True` the sample's PIL
    image is replaced by that view (crop + flip); the student's preprocess after this stage must then be
    deterministic (resize, centre crop, normalise, as the teacher's was) so that it sees the pixels the
    teacher saw.

    The sibling shard of the sample's source shard is loaded on first use; recently used shards are kept
    while they fit in `max_bytes_in_memory` (the loader's shuffle buffer interleaves several shards).
    A sample whose key is not in its cache shard is refused (the cache was made from other data).
    Picklable: loaded shards are not sent to worker processes.
    """

    def __init__(self, cache_dir: str | os.PathLike, view: Optional[str] = None, seed: int = 0, replay: bool = True,
                 max_bytes_in_memory: int = 256 << 20):
        if view not in (None, "first", "random"):
            raise UserError(f"cache view must be 'first' or 'random', got {view!r}")
        self.cache_dir = str(cache_dir)
        self.meta = read_cache_meta(cache_dir)
        self.views = int(self.meta["augmentation"]["views"])
        if view == "random" and self.views == 1:
            raise UserError(f"--cache-view random needs a cache with several views per sample, but {cache_dir} "
                            f"holds one (made with --augmentations 1): drop --cache-view or re-run embed with "
                            f"--augmentations K")
        if view is None:
            view = "random" if self.views > 1 else "first"
        self.view, self.seed, self.replay, self.epoch = view, int(seed), bool(replay), 0
        self.max_bytes = int(max_bytes_in_memory)
        self._counts = {s["name"]: s["count"] for s in self.meta["shards"]}
        self._loaded: "OrderedDict[str, CachedShard]" = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_loaded"] = OrderedDict()
        return state

    def _shard(self, url: str) -> CachedShard:
        name = sibling_name(url)
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        if name not in self._counts:
            raise DataError(f"source shard {url} has no cache shard in {self.cache_dir} "
                            f"(the cache was made from other shards)")
        shard = read_cached_shard(self.cache_dir, name, expected_count=self._counts[name], views=self.views)
        self._loaded[name] = shard
        while len(self._loaded) > 1 and sum(s.nbytes for s in self._loaded.values()) > self.max_bytes:
            self._loaded.popitem(last=False)
        return shard

    def __call__(self, sample: dict) -> dict:
        shard = self._shard(sample["url"])
        i = shard.index.get(sample["key"])
        if i is None:
            raise DataError(f"cache shard {self.cache_dir}/{shard.name} has no sample {sample['key']} of source "
                            f"shard {sample['url']}: the cache was made from different data")
        v = 0
        if self.view == "random" and self.views > 1:
            v = int(key_rng(self.seed, sample["key"], self.epoch).integers(self.views))
        params = shard.paug[i, v] if shard.paug is not None else np.asarray(IDENTITY, np.float32)
        if self.replay and not is_identity(params) and sample.get("image") is not None:
            sample["image"] = apply_params(sample["image"], params)
        sample["t_image_emb"] = shard.image_emb[i, v].astype(np.float32)
        sample["t_text_emb"] = shard.text_emb[i].astype(np.float32)
        sample["paug"] = np.asarray(params, dtype=np.float32)
        return sample


def _rank_block(counts: list[int], order: list[int], rank: int, world_size: int) -> Iterator[tuple[int, int, int]]:
    """(shard index, start, stop) pieces of this rank's contiguous block of the epoch's sample sequence.

    Every rank gets exactly N // world_size samples, so all ranks yield the same number of batches.
    """
    per_rank = sum(counts) // world_size
    begin, end = rank * per_rank, (rank + 1) * per_rank
    offset = 0
    for s in order:
        lo, hi = max(begin - offset, 0), min(end - offset, counts[s])
        if lo < hi:
            yield s, lo, hi
        offset += counts[s]
        if offset >= end:
            break


def iter_cached_embeddings(cache_dir: str | os.PathLike, *, batch_size: int, rank: int = 0, world_size: int = 1,
                           seed: int = 0, epoch: int = 0, shuffle: bool = True, drop_last: bool = False,
                           shuffle_buffer: int = 16384, all_views: bool = False) -> Iterator[dict]:
    """Batches of cached teacher embeddings, read straight from the cache shards (no image is decoded).

    Yields {"t_image_emb": FloatTensor[B, D_img] (view 0, the plain image; [B, K, D_img], every view, with
    `all_views`), "t_text_emb": FloatTensor[B, D_txt], "key": list[str]}. One call = one epoch. Under DDP each rank reads a disjoint contiguous block of
    N // world_size samples of the epoch's shard order (the remainder is left out this epoch), so every
    rank yields the same number of batches. With `shuffle`, the shard order is permuted per (seed, epoch)
    and samples are shuffled within a buffer of about `shuffle_buffer` samples.
    """
    import torch

    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")
    meta = read_cache_meta(cache_dir)
    shards = meta["shards"]
    counts = [int(s["count"]) for s in shards]
    views = int(meta["augmentation"]["views"])
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
    order = list(rng.permutation(len(shards))) if shuffle else list(range(len(shards)))
    buffer_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 1 + rank])

    def batches(keys, img, txt, final):
        if shuffle:
            perm = buffer_rng.permutation(len(keys))
            keys, img, txt = [keys[j] for j in perm], img[perm], txt[perm]
        n_full = len(keys) // batch_size * batch_size
        stop = len(keys) if final and not drop_last else n_full
        for b in range(0, stop, batch_size):
            yield {"t_image_emb": torch.from_numpy(img[b:b + batch_size].astype(np.float32)),
                   "t_text_emb": torch.from_numpy(txt[b:b + batch_size].astype(np.float32)),
                   "key": keys[b:b + batch_size]}
        return keys[n_full:], img[n_full:], txt[n_full:]

    pending: list[tuple] = []
    buffered = 0
    pieces = list(_rank_block(counts, order, rank, world_size))
    for j, (s, lo, hi) in enumerate(pieces):
        shard = read_cached_shard(cache_dir, shards[s]["name"], expected_count=counts[s], views=views)
        pending.append((shard.keys[lo:hi], shard.image_emb[lo:hi] if all_views else shard.image_emb[lo:hi, 0],
                        shard.text_emb[lo:hi]))
        buffered += hi - lo
        final = j == len(pieces) - 1
        if buffered >= max(shuffle_buffer, batch_size) or final:
            keys = [k for p in pending for k in p[0]]
            img = np.concatenate([p[1] for p in pending])
            txt = np.concatenate([p[2] for p in pending])
            rest = yield from batches(keys, img, txt, final)
            pending = [rest] if len(rest[0]) else []
            buffered = len(rest[0])


def num_cached_batches(meta: dict, *, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """How many batches `iter_cached_embeddings` yields per rank per epoch (for schedulers)."""
    per_rank = meta["num_samples"] // world_size
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
