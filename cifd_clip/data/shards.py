"""Read webdataset shards (img2dataset layout) one sample at a time, without any model.

A shard spec is what users pass as `--train-data`:
  - brace expansion: `data/{00000..00099}.tar`
  - several sources joined with `::`: `a/{0..9}.tar::b/{0..4}.tar`
  - anything webdataset's `gopen` opens: local paths, `file:`, `pipe:aws s3 cp s3://... -`, `https://...`

`iter_samples(urls)` yields decoded samples `{"key", "url", "image" (PIL RGB), "text"}` in shard order,
shard after shard, so a caller can process one shard at a time (`iter_samples([url])`). Samples that
cannot be used are skipped and counted in a `BadSampleStats` by reason, never raised.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import braceexpand

from ..errors import DataError
from ..file_io import write_atomic

DEFAULT_IMAGE_KEY = "jpg;jpeg;png;webp"
DEFAULT_TEXT_KEY = "txt"
MAX_EXAMPLES_PER_REASON = 5

# Reasons a sample is skipped (the keys of BadSampleStats.counts).
UNREADABLE_SHARD = "unreadable_shard"      # shard missing, not a tar, or truncated (counted once per shard)
UNDECODABLE_IMAGE = "undecodable_image"
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
DUPLICATE_KEY = "duplicate_key"


def expand_urls(spec: str) -> list[str]:
    """All shard urls of a spec: `::` joins sources, each brace-expanded; order is kept."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError("the shard spec is empty: give one or more tar files, e.g. 'data/{00000..00009}.tar'")
    urls: list[str] = []
    for source in spec.split("::"):
        source = source.strip()
        if source:
            urls.extend(u for u in braceexpand.braceexpand(source) if u)
    if not urls:
        raise DataError(f"the shard spec {spec!r} names no shard")
    return urls


def is_local(url: str) -> bool:
    """True for plain paths and file: urls (which can be checked and counted on disk)."""
    return "://" not in url and not url.startswith("pipe:") or url.startswith("file:")


def local_path(url: str) -> Path:
    return Path(url[len("file:"):] if url.startswith("file:") else url).expanduser()


def _read_counts(directory: Path) -> tuple[Optional[dict], Optional[int]]:
    sizes, total = None, None
    sizes_file = directory / "sizes.json"
    if sizes_file.is_file():
        try:
            sizes = {str(k): int(v) for k, v in json.loads(sizes_file.read_text()).items()}
        except (ValueError, TypeError, AttributeError):
            raise DataError(f"{sizes_file} is not a JSON mapping of shard names to sample counts") from None
    len_file = directory / "__len__"
    if len_file.is_file():
        try:
            total = int(len_file.read_text().strip())
        except ValueError:
            raise DataError(f"{len_file} must hold one integer (the number of samples in its folder)") from None
    return sizes, total


STATS_SUFFIX = "_stats.json"  # img2dataset writes NNNNN_stats.json beside NNNNN.tar once that shard is complete


def stats_file(shard: Path) -> Path:
    """The img2dataset stats file of a shard: `00012.tar` -> `00012_stats.json` beside it."""
    stem = shard.name[:-len(".tar")] if shard.name.endswith(".tar") else shard.stem
    return shard.with_name(stem + STATS_SUFFIX)


def read_stats_count(path: Path) -> int:
    """The samples img2dataset (or make-shards) wrote into a shard: the `successes` of its stats file."""
    try:
        n = json.loads(path.read_text()).get("successes")
    except (OSError, ValueError, AttributeError):
        n = None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"{path} is not an img2dataset stats file (it needs a non-negative integer 'successes')")
    return n


def sizes_from_stats(directory: Path, names: Iterable[str]) -> Optional[dict]:
    """{shard name: samples} from the img2dataset `*_stats.json` of each named shard; None when one has none
    (img2dataset writes it only when the shard is complete)."""
    sizes = {}
    for name in names:
        f = stats_file(directory / name)
        if not f.is_file():
            return None
        sizes[name] = read_stats_count(f)
    return sizes


def count_samples(urls: list[str]) -> Optional[int]:
    """Number of samples in `urls` from `sizes.json` ({shard basename: n}), `__len__`, or img2dataset's
    per-shard `NNNNN_stats.json` (their `successes`) beside them.

    `sizes.json` is used when it lists every shard of that folder in `urls`; `__len__` (the count of the
    whole folder) only when every tar of that folder is in `urls`; the stats files when every shard of that
    folder in `urls` has one (raw img2dataset output, which writes no sizes.json). None when any shard
    cannot be counted (remote or pipe urls, no count files): callers then need an explicit number of samples.
    """
    by_dir: dict[Path, list[str]] = {}
    for url in urls:
        if not is_local(url):
            return None
        path = local_path(url)
        by_dir.setdefault(path.parent, []).append(path.name)
    total = 0
    for directory, names in by_dir.items():
        sizes, dir_total = _read_counts(directory)
        if sizes is not None and all(n in sizes for n in names):
            total += sum(sizes[n] for n in names)
        elif dir_total is not None and set(names) >= {p.name for p in directory.glob("*.tar")}:
            total += dir_total
        elif sizes is None and (from_stats := sizes_from_stats(directory, names)) is not None:
            total += sum(from_stats.values())
        else:
            return None
    return total


@dataclass
class BadSampleStats:
    """Counts of good and skipped samples, by reason, with a few (shard, key) examples per reason."""

    good: int = 0
    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    repeated: int = 0  # good samples read a second time in one epoch (a reader's shards ran out before its quota)

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    @property
    def bad_fraction(self) -> float:
        seen = self.good + self.bad
        return self.bad / seen if seen else 0.0

    def record(self, reason: str, url: str, key: Optional[str], detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES_PER_REASON:
            shown.append({"shard": url, "key": key, "detail": detail})

    def merge(self, other: "BadSampleStats | dict") -> None:
        other = other if isinstance(other, BadSampleStats) else BadSampleStats.from_dict(other)
        self.good += other.good
        self.repeated += other.repeated
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        for reason, shown in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(shown[: max(0, MAX_EXAMPLES_PER_REASON - len(mine))])

    def to_dict(self) -> dict:
        return {"good": self.good, "bad": self.bad, "counts": dict(self.counts), "repeated": self.repeated,
                "examples": {r: list(e) for r, e in self.examples.items()}}

    def take(self) -> dict:
        """The counts so far as a dict, leaving this object empty (for sending deltas)."""
        d = self.to_dict()
        self.good, self.counts, self.examples, self.repeated = 0, {}, {}, 0
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BadSampleStats":
        return cls(good=int(d.get("good", 0)), counts=dict(d.get("counts", {})), repeated=int(d.get("repeated", 0)),
                   examples={r: list(e) for r, e in d.get("examples", {}).items()})

    def summary(self) -> str:
        """One line: 'N bad of M samples (x%): reason=n (e.g. shard:key), ...'."""
        if not self.bad:
            return f"no bad samples in {self.good} samples"
        parts = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            ex = self.examples.get(reason) or [{}]
            parts.append(f"{reason}={n} (e.g. {ex[0].get('shard')}:{ex[0].get('key')})")
        return f"{self.bad} bad of {self.good + self.bad} samples ({100 * self.bad_fraction:.1f}%): " + ", ".join(parts)


def _split_name(name: str) -> tuple[Optional[str], Optional[str]]:
    """(key, extension) of a tar member: the key is the path up to the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    if "." not in base:
        return None, None
    stem, ext = base.split(".", 1)
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_raw_samples(url: str, stats: Optional[BadSampleStats] = None) -> Iterator[dict]:
    """Group the members of one shard into raw samples `{"__key__", "__url__", ext: bytes, ...}`.

    A missing, unreadable or truncated shard is counted once as `unreadable_shard` (the samples read
    before the damage are kept). A key seen twice in a shard keeps its first copy only (counted as `duplicate_key`).
    """
    import webdataset as wds

    stats = stats if stats is not None else BadSampleStats()
    seen: set[str] = set()
    current: Optional[dict] = None
    duplicate = False
    stream = None

    def finish(sample):
        if sample is None:
            return None
        if sample["__key__"] in seen:
            stats.record(DUPLICATE_KEY, url, sample["__key__"])
            return None
        if duplicate:  # the key repeated right away: keep the first copy's members
            stats.record(DUPLICATE_KEY, url, sample["__key__"])
        seen.add(sample["__key__"])
        return sample

    try:
        stream = wds.gopen(url, "rb")
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = _split_name(member.name)
                if key is None or os.path.basename(key).startswith("__"):
                    continue  # metadata members such as __len__, or names without an extension
                data = tar.extractfile(member).read()
                tar.members = []  # streaming: do not keep every TarInfo of a large shard in memory
                if current is None or key != current["__key__"]:
                    done = finish(current)
                    if done is not None:
                        yield done
                    current, duplicate = {"__key__": key, "__url__": url}, False
                if ext in current:
                    duplicate = True
                    continue
                current[ext] = data
    except Exception as e:  # a broken shard must never stop the run: count it and move on
        current = None
        stats.record(UNREADABLE_SHARD, url, None, f"{type(e).__name__}: {e}"[:200])
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception as e:  # pipe: urls report a failed command when closed
                if current is not None:
                    stats.record(UNREADABLE_SHARD, url, None, f"{type(e).__name__}: {e}"[:200])
    done = finish(current)
    if done is not None:
        yield done


def key_alternatives(spec: str) -> list[str]:
    """'jpg;png' -> ['jpg', 'png']: the member extensions that may hold one field."""
    return [k.strip().lower() for k in spec.split(";") if k.strip()]


def decode_sample(raw: dict, *, image_key: str = DEFAULT_IMAGE_KEY, text_key: str = DEFAULT_TEXT_KEY,
                  caption_json_field: Optional[str] = None,
                  stats: Optional[BadSampleStats] = None) -> Optional[dict]:
    """Decode one raw sample to `{"key", "url", "image", "text"}`, or None (counted in `stats`)."""
    from PIL import Image

    stats = stats if stats is not None else BadSampleStats()
    key, url = raw["__key__"], raw["__url__"]
    image_ext = next((e for e in key_alternatives(image_key) if e in raw), None)
    if image_ext is None:
        stats.record(MISSING_IMAGE, url, key)
        return None
    text = None
    if caption_json_field:
        try:
            text = json.loads(raw["json"]).get(caption_json_field) if "json" in raw else None
        except (ValueError, AttributeError):
            text = None
    else:
        text_ext = next((e for e in key_alternatives(text_key) if e in raw), None)
        if text_ext is not None:
            text = raw[text_ext].decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.strip():
        stats.record(MISSING_CAPTION, url, key)
        return None
    try:
        with Image.open(io.BytesIO(raw[image_ext])) as im:
            image = im.convert("RGB")
    except Exception as e:
        stats.record(UNDECODABLE_IMAGE, url, key, f"{type(e).__name__}: {e}"[:200])
        return None
    stats.good += 1
    return {"key": key, "url": url, "image": image, "text": text.strip()}


def iter_samples(urls: Iterable[str] | str, *, image_key: str = DEFAULT_IMAGE_KEY, text_key: str = DEFAULT_TEXT_KEY,
                 caption_json_field: Optional[str] = None,
                 stats: Optional[BadSampleStats] = None) -> Iterator[dict]:
    """Decoded samples of `urls`, shard after shard in the given order, bad ones skipped and counted.

    `image_key`/`text_key` list accepted extensions separated by `;` (first present wins);
    `caption_json_field` takes the caption from that field of the sample's `.json` member instead.
    """
    if isinstance(urls, str):
        urls = expand_urls(urls)
    stats = stats if stats is not None else BadSampleStats()
    for url in urls:
        for raw in iter_raw_samples(url, stats):
            sample = decode_sample(raw, image_key=image_key, text_key=text_key,
                                   caption_json_field=caption_json_field, stats=stats)
            if sample is not None:
                yield sample


def write_shard(path: str | os.PathLike, samples: Iterable[dict]) -> int:
    """Write samples `{"__key__": str, ext: bytes|str, ...}` to a tar, byte-identical for the same input.

    Member times, owners and modes are fixed so that the same samples always give the same file.
    Returns the number of samples written. The file appears atomically (temp file + rename).
    """
    import webdataset as wds

    count = [0]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            with wds.TarWriter(f, user="", group="", mode=0o644, mtime=0.0, encoder=False) as writer:
                for sample in samples:
                    writer.write({k: (v.encode("utf-8") if isinstance(v, str) and k != "__key__" else v)
                                  for k, v in sample.items()})
                    count[0] += 1

    write_atomic(path, write)
    return count[0]
