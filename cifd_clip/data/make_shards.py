"""Turn a user's own files into img2dataset-layout shards (stage `make-shards`).

Inputs: a CSV/TSV of image paths and captions (read as open_clip_train reads `--dataset-type csv`: a header
row, `--csv-img-key` / `--csv-caption-key` columns, `--csv-separator`), or a folder of images with
same-named caption files (`a.jpg` + `a.txt`, subfolders included). Output, in `out`:

  NNNNN.tar         KEY.jpg|png|webp, KEY.txt (the caption), KEY.json (img2dataset's metadata fields)
  NNNNN_stats.json  img2dataset's per-shard stats (count, successes, failed_to_download, failed_to_resize,
                    duration, start_time, end_time, status_dict), plus the skipped inputs by reason
  sizes.json        {shard name: samples}, derived from the stats files (a shard whose every input was
                    skipped has no tar and is not listed: an empty tar is no shard a reader accepts)
  make_shards.json  what the shards were made from (input, settings, a fingerprint of the rows)

Input row i goes to shard i // samples_per_shard with key SHARD + position (img2dataset's keys), so a
rerun with the same input and settings keeps every shard that is complete (its tar and its stats file)
and writes only the rest. Images that are missing or do not decode and rows without a caption are
skipped, counted by reason (`missing_image`, `undecodable_image`, `missing_caption`, the loader's names)
in the stats and in the summary, never dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, DataError, UserError
from ..file_io import write_text_atomic
from .shards import MISSING_CAPTION, MISSING_IMAGE, STATS_SUFFIX, UNDECODABLE_IMAGE, sizes_from_stats, write_shard

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # stored as they are when not resized
RESIZE_MODES = ("keep_ratio", "center_crop", "border")
MANIFEST = "make_shards.json"
MANIFEST_FORMAT = "cifd-clip make-shards 1"
MAX_EXAMPLES = 5
JPEG_QUALITY = 95  # img2dataset's default encode_quality


@dataclass
class Item:
    """One input row: the image file (None: a caption file without its image), its caption (None: none),
    and the name the user gave it (the CSV cell, or the path inside the folder)."""

    image: Optional[Path]
    caption: Optional[str]
    source: str


@dataclass
class Summary:
    inputs: int = 0
    shards: int = 0
    written: int = 0          # samples in all shards, kept ones included
    kept_shards: int = 0      # complete shards of an earlier run that were kept
    skipped: dict = field(default_factory=dict)    # reason -> count
    examples: dict = field(default_factory=dict)   # reason -> [source, ...]
    shard_names: list = field(default_factory=list)   # the shards written, those of no sample left out
    empty_shards: int = 0     # shards whose every input was skipped (no tar, a stats file only)

    def add_skips(self, skipped: dict, examples: dict) -> None:
        for reason, n in skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + int(n)
        for reason, shown in examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(shown[: max(0, MAX_EXAMPLES - len(mine))])

    def skipped_text(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        parts = [f"{reason}={n} (e.g. {(self.examples.get(reason) or ['?'])[0]})"
                 for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])]
        return f"skipped {sum(self.skipped.values())} of {self.inputs} inputs: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------- inputs

def csv_separator(text: str) -> str:
    """`--csv-separator`: one character; `\\t` and `tab` spell a tab (open_clip_train's default)."""
    sep = "\t" if text in ("\\t", "tab", "TAB") else text
    if len(sep) != 1:
        raise ConfigError(f"--csv-separator must be one character (e.g. ',' or a tab), got {text!r}")
    return sep


def read_csv_items(path: str | os.PathLike, *, img_key: str, caption_key: str, separator: str) -> list[Item]:
    """The rows of a CSV/TSV with a header, as open_clip_train's CsvDataset reads them. Relative image paths
    are resolved against the CSV's folder (else the current folder, where open_clip_train looks)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"the input {path} does not exist: give a CSV/TSV file of image paths and captions, "
                        f"or a folder of images with caption files")
    sep = csv_separator(separator)
    base = path.parent
    items: list[Item] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, None)
            if not header:
                raise DataError(f"the CSV {path} is empty: it needs a header row naming the columns "
                                f"'{img_key}' and '{caption_key}'")
            columns = [h.strip() for h in header]
            for key, flag in ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
                if key not in columns:
                    hint = ""
                    if len(columns) == 1 and sep != "," and "," in columns[0]:
                        hint = "; its header looks comma-separated: give --csv-separator ','"
                    elif len(columns) == 1 and sep != "\t" and "\t" in columns[0]:
                        hint = "; its header looks tab-separated: give --csv-separator '\\t'"
                    raise DataError(f"the CSV {path} has no column '{key}' ({flag}); its columns are "
                                    f"{columns[:8]}{hint}")
            img_col, cap_col = columns.index(img_key), columns.index(caption_key)
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # a blank line, which pandas (and so open_clip_train) skips too
                cell = row[img_col].strip() if img_col < len(row) else ""
                caption = row[cap_col].strip() if cap_col < len(row) else ""
                items.append(Item(image=_resolve(cell, base) if cell else None, caption=caption or None,
                                  source=cell or f"{path.name} line {reader.line_num}"))
    except UnicodeDecodeError:
        raise DataError(f"the CSV {path} is not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"the CSV {path} cannot be parsed near line {reader.line_num}: {e}") from None
    except IsADirectoryError:
        raise DataError(f"the input {path} is a folder") from None
    except OSError as e:
        raise DataError(f"cannot read the CSV {path}: {e.strerror or e}") from None
    if not items:
        raise DataError(f"the CSV {path} has a header but no rows")
    return items


def _resolve(cell: str, base: Path) -> Path:
    p = Path(cell).expanduser()
    if p.is_absolute():
        return p
    beside = base / p
    if not beside.exists() and p.exists():
        return p.absolute()
    return beside


def read_folder_items(folder: str | os.PathLike, *, exclude: Optional[Path] = None) -> list[Item]:
    """Every image under `folder` (subfolders too, sorted by path) with its same-named `.txt` caption; a
    caption file without an image is an item too (counted as missing_image)."""
    folder = Path(folder)
    exclude = exclude.absolute() if exclude is not None else None
    images: dict[Path, Path] = {}
    captions: dict[Path, Path] = {}
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        if exclude is not None and root_path.absolute() == exclude:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = root_path / name
            rel = path.relative_to(folder)
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                images[rel] = path
            elif suffix == ".txt":
                captions[rel.with_suffix("")] = path
    if not images:
        raise DataError(f"the folder {folder} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}): "
                        f"give a folder of images with same-named caption files (a.jpg + a.txt), or a CSV")
    items = []
    with_image = set()
    for rel in sorted(images):
        stem = rel.with_suffix("")
        with_image.add(stem)
        caption = None
        if stem in captions:
            try:
                caption = captions[stem].read_text(encoding="utf-8", errors="replace").strip() or None
            except OSError:
                caption = None
        items.append(Item(image=images[rel], caption=caption, source=str(rel)))
    for stem in sorted(set(captions) - with_image):
        items.append(Item(image=None, caption=None, source=str(captions[stem].relative_to(folder))))
    return items


def read_items(input_path: str | os.PathLike, *, img_key: str, caption_key: str, separator: str,
               out: Optional[Path] = None) -> tuple[str, list[Item]]:
    """("csv" or "folder", the items) of `--input`."""
    path = Path(input_path)
    if path.is_dir():
        return "folder", read_folder_items(path, exclude=out)
    return "csv", read_csv_items(path, img_key=img_key, caption_key=caption_key, separator=separator)


# ---------------------------------------------------------------------------------------------- images

class SkippedInput(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _resize(im, size: int, mode: str):
    from PIL import Image

    w, h = im.size
    if mode == "border":  # the longer side to `size`, padded to a square (img2dataset's border mode)
        scale = size / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(im.resize(new, Image.Resampling.LANCZOS), ((size - new[0]) // 2, (size - new[1]) // 2))
        return canvas
    scale = size / min(w, h)  # the shorter side to `size` (keep_ratio), then a centre square (center_crop)
    new = (max(size, round(w * scale)), max(size, round(h * scale))) if mode == "center_crop" else \
        (max(1, round(w * scale)), max(1, round(h * scale)))
    im = im.resize(new, Image.Resampling.LANCZOS)
    if mode == "center_crop":
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def encode_image(path: Optional[Path], image_size: Optional[int] = None,
                 resize_mode: str = "keep_ratio") -> tuple[bytes, str, dict]:
    """(bytes, extension, metadata) of one image, checked to decode whole. JPEG, PNG and WebP are kept as
    they are unless resized; other formats, and every resized image, are stored as JPEG."""
    from PIL import Image

    if path is None:
        raise SkippedInput(MISSING_IMAGE, "no image path")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SkippedInput(MISSING_IMAGE, f"{type(e).__name__}: {e.strerror or e}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, (width, height) = im.format, im.size
            meta = {"original_width": width, "original_height": height, "width": width, "height": height}
            if image_size is None and fmt in KEPT_FORMATS:
                return data, KEPT_FORMATS[fmt], meta
            rgb = im.convert("RGB")
        if image_size is not None:
            rgb = _resize(rgb, image_size, resize_mode)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
        meta["width"], meta["height"] = rgb.size
        return buf.getvalue(), "jpg", meta
    except Exception as e:  # PIL raises many kinds for a bad file: every one means "does not decode"
        text = "not an image file" if type(e).__name__ == "UnidentifiedImageError" else f"{type(e).__name__}: {e}"
        raise SkippedInput(UNDECODABLE_IMAGE, text[:200]) from None


# ---------------------------------------------------------------------------------------------- shards

def fingerprint(items: list[Item], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for item in items:
        h.update(json.dumps([item.source, item.caption]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def shard_layout(num_items: int, samples_per_shard: int) -> tuple[int, int, int]:
    """(shards, digits of a shard name, digits of a position): img2dataset's names (at least 5 digits)."""
    shards = max(1, -(-num_items // samples_per_shard))
    return shards, max(5, len(str(shards - 1))), max(1, len(str(samples_per_shard - 1)))


def _our_files(out: Path) -> list[Path]:
    """What an earlier make-shards (or img2dataset) run left in `out`: shards, their stats, sizes.json."""
    found = []
    for p in out.iterdir():
        if p.is_file() and (p.suffix == ".tar" or p.name.endswith(STATS_SUFFIX)
                            or p.name in ("sizes.json", MANIFEST)):
            found.append(p)
    return found


def _read_manifest(out: Path) -> Optional[dict]:
    f = out / MANIFEST
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def prepare_out(out: Path, fp: str, overwrite: bool) -> None:
    """Refuse an `out` that holds something else (unless --overwrite, which removes the earlier shards);
    keep it as it is when it holds an earlier run of the same input and settings (resume)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if not out.exists():
        return
    manifest = _read_manifest(out)
    if manifest is not None and manifest.get("fingerprint") == fp:
        return  # the same input and settings: resume
    others = [p for p in out.iterdir() if not p.name.startswith(".")]
    if not others:
        return
    if not overwrite:
        what = ("shards made from another input or with other settings" if manifest is not None
                else "files that make-shards did not write")
        raise UserError(f"--out {out} already holds {what} ({sorted(p.name for p in others)[0]}); pass "
                        f"--overwrite to replace its shards, or choose another folder")
    for p in _our_files(out):
        p.unlink()


def _shard_done(out: Path, name: str) -> bool:
    """A shard is complete once its stats file is written (after its tar; a shard of no sample has no tar)."""
    stats = out / (name[:-len(".tar")] + STATS_SUFFIX)
    if not stats.is_file():
        return False
    if (out / name).is_file():
        return True
    try:
        return json.loads(stats.read_text()).get("successes") == 0
    except (OSError, ValueError, AttributeError):
        return False


def train_data_spec(out: Path, names: list[str]) -> str:
    """`--train-data` for these shard names: brace ranges of consecutive shards, joined by `::`."""
    stems = [n[:-len(".tar")] for n in names]
    runs: list[list[str]] = []
    for stem in stems:
        if runs and int(stem) == int(runs[-1][-1]) + 1:
            runs[-1].append(stem)
        else:
            runs.append([stem])
    root = str(out).rstrip("/")
    return "::".join(f"{root}/{r[0]}.tar" if len(r) == 1 else f"{root}/{{{r[0]}..{r[-1]}}}.tar" for r in runs)


def _write_one_shard(out: Path, name: str, shard: int, rows: list[Item], digits: tuple[int, int], *, image_size,
                     resize_mode) -> dict:
    """Write one shard's tar (none when no row gives a sample), then its stats file; returns the stats."""
    start = time.time()
    skipped: dict[str, int] = {}
    examples: dict[str, list] = {}
    written = [0]

    def skip(reason, item, detail=""):
        skipped[reason] = skipped.get(reason, 0) + 1
        shown = examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(f"{item.source}" + (f" ({detail})" if detail else ""))

    def samples():
        for position, item in enumerate(rows):
            if item.image is None:
                skip(MISSING_IMAGE, item, "a caption without its image" if item.caption is None else "no image path")
                continue
            if not item.caption:
                skip(MISSING_CAPTION, item)
                continue
            try:
                data, ext, meta = encode_image(item.image, image_size, resize_mode)
            except SkippedInput as e:
                skip(e.reason, item, e.detail)
                continue
            key = f"{shard:0{digits[0]}d}{position:0{digits[1]}d}"  # img2dataset's keys: shard, then position
            info = {"url": item.source, "key": key, "caption": item.caption, "status": "success",
                    "error_message": None, **meta}
            written[0] += 1
            yield {"__key__": key, ext: data, "txt": item.caption, "json": json.dumps(info, sort_keys=True)}

    write_shard(out / name, samples())
    if not written[0]:  # an empty tar is no shard a reader accepts: a shard of no sample is its stats file only
        (out / name).unlink()
    end = time.time()
    stats = {
        # img2dataset's fields: an input that is not there counts as failed_to_download, one that does not
        # decode as failed_to_resize, so that count = successes + failed_to_download + failed_to_resize
        "count": len(rows),
        "successes": written[0],
        "failed_to_download": skipped.get(MISSING_IMAGE, 0) + skipped.get(MISSING_CAPTION, 0),
        "failed_to_resize": skipped.get(UNDECODABLE_IMAGE, 0),
        "duration": end - start,
        "start_time": start,
        "end_time": end,
        "status_dict": {"success": written[0], **skipped} if written[0] else dict(skipped),
        # ours: the loader's reason names, with a few of the inputs skipped for each
        "skipped": skipped,
        "skipped_examples": examples,
    }
    stem = name[:-len(".tar")]
    write_text_atomic(out / (stem + STATS_SUFFIX), json.dumps(stats, indent=4, sort_keys=True) + "\n")
    return stats


def make_shards(input_path: str | os.PathLike, out: str | os.PathLike, *, samples_per_shard: int = 10000,
                image_size: Optional[int] = None, resize_mode: str = "keep_ratio", img_key: str = "filepath",
                caption_key: str = "title", separator: str = "\t", overwrite: bool = False, workers: int = 1,
                progress=None) -> Summary:
    """Write the shards of `input_path` (a CSV/TSV or a folder) into `out`; see the module docstring.
    `workers` processes write shards side by side; `progress(shard_name, stats)` is called after each shard."""
    from ..output_checks import check_folder_target, hold_run_lock, release_run_lock

    if samples_per_shard < 1:
        raise ConfigError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"--image-size must be at least 1, got {image_size}")
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"--resize-mode must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    if Path(input_path).is_dir() and out.exists() and out.resolve() == Path(input_path).resolve():
        raise UserError(f"--out {out} is the --input folder: write the shards to another folder")
    kind, items = read_items(input_path, img_key=img_key, caption_key=caption_key, separator=separator, out=out)
    settings = {"samples_per_shard": samples_per_shard, "image_size": image_size,
                "resize_mode": resize_mode if image_size else None}
    fp = fingerprint(items, settings)
    check_folder_target(out, "--out")
    hold_run_lock(out, "--out")
    try:
        prepare_out(out, fp, overwrite)
        return _write_all(out, items, kind, input_path, settings, fp, workers=workers, progress=progress)
    finally:
        release_run_lock(out)


def _write_all(out: Path, items: list[Item], kind: str, input_path, settings: dict, fp: str, *, workers: int,
               progress) -> Summary:
    samples_per_shard = settings["samples_per_shard"]
    num_shards, shard_digits, key_digits = shard_layout(len(items), samples_per_shard)
    manifest = {"format": MANIFEST_FORMAT, "input": str(input_path), "input_kind": kind, "inputs": len(items),
                "shards": num_shards, "fingerprint": fp, **settings}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    summary = Summary(inputs=len(items), shards=num_shards)
    names, todo = [], []
    for shard in range(num_shards):
        name = f"{shard:0{shard_digits}d}.tar"
        names.append(name)
        if _shard_done(out, name):
            summary.kept_shards += 1
            stats_path = out / (name[:-len(".tar")] + STATS_SUFFIX)
            try:
                stats = json.loads(stats_path.read_text())
                summary.add_skips(stats.get("skipped", {}), stats.get("skipped_examples", {}))
            except (OSError, ValueError, AttributeError):
                pass
            continue
        todo.append((out, name, shard, items[shard * samples_per_shard:(shard + 1) * samples_per_shard],
                     (shard_digits, key_digits)))
    options = {"image_size": settings["image_size"], "resize_mode": settings["resize_mode"] or "keep_ratio"}

    def done(name: str, stats: dict) -> None:
        summary.add_skips(stats["skipped"], stats["skipped_examples"])
        if progress is not None:
            progress(name, stats)

    if workers == 1 or len(todo) <= 1:
        for job in todo:
            done(job[1], _write_one_shard(*job, **options))
    else:  # shards are independent files: one process per shard at a time. Forked where the system has it (a
        # spawned worker would import webdataset, and with it torch, again: seconds each); the workers use PIL only
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context(method)) as pool:
            futures = {pool.submit(_write_one_shard, *job, **options): job[1] for job in todo}
            for future in as_completed(futures):
                done(futures[future], future.result())
    sizes = {name: n for name, n in sizes_from_stats(out, names).items() if n}
    summary.shard_names = sorted(sizes)
    summary.empty_shards = num_shards - len(sizes)
    summary.written = sum(sizes.values())
    write_text_atomic(out / "sizes.json", json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    if summary.written == 0:
        raise DataError(f"none of the {len(items)} inputs of {input_path} gave a sample ({summary.skipped_text()})")
    return summary


__all__ = ["Item", "Summary", "make_shards", "read_csv_items", "read_folder_items", "encode_image"]
