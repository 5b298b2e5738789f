"""The built-in demo data: procedurally drawn scenes of coloured shapes with captions.

Each image shows one or two shapes on a noisy neutral background. A shape has a kind (6), a colour
(6), a size (small/large), a fill (plain/striped) and a position (3×3 grid; with two shapes, their
left/right or above/below relation). Captions name all of it in several phrasings, so colour is easy,
the kind of shape is harder at low resolution, and size, stripes, position and relations are the fine
detail where a small student falls behind a larger teacher.

Layout written by `write_demo_data(out)`:
  train/00000.tar ... + sizes.json     img2dataset layout: KEY.jpg, KEY.txt (one caption), KEY.json
  val/00000.tar ...   + sizes.json     same
  zeroshot/            CLIP_benchmark webdataset layout: test/{0..N-1}.tar (KEY.jpg, KEY.cls), test/nshards.txt,
                       classnames.txt ("red circle", ...: 36 classes), zeroshot_classification_templates.txt
  retrieval/           test/{0..N-1}.tar (KEY.jpg, KEY.txt with 5 captions, one per line), test/nshards.txt,
                       dataset_type.txt = "retrieval"
  demo_info.json       the settings and counts
Everything is a function of the seed: the same settings give byte-identical files.
"""
from __future__ import annotations

import io
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError
from .shards import write_shard

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 220),
    "yellow": (235, 205, 35), "purple": (140, 60, 185), "orange": (245, 135, 25),
}
SIZES = {"small": (0.13, 0.17), "large": (0.26, 0.32)}  # radius as a fraction of the image side
FILLS = ("plain", "striped")
GRID = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CLASSNAMES = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.", "a {c}.", "a picture with a {c} in it.",
             "a small {c}.", "a large {c}.", "a striped {c}.")
CAPTIONS_PER_RETRIEVAL_IMAGE = 5
SUPERSAMPLE = 4
JPEG_QUALITY = 92
SHORT_CAPTION_FRACTION = 0.7  # training captions that name only colour and kind


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    fill: str
    cx: float  # centre, as fractions of the image side
    cy: float
    radius: float

    def words(self, article: bool = True) -> str:
        fill = "striped " if self.fill == "striped" else ""
        text = f"{self.size} {fill}{self.colour} {self.kind}"
        return f"a {text}" if article else text


@dataclass(frozen=True)
class Scene:
    shapes: tuple
    background: tuple
    position: str = ""   # grid cell of a single shape
    relation: str = ""   # "left-of" or "above" for two shapes (shapes[0] is left / above)


def _position_phrase(cell: str) -> str:
    return {"center": "in the center", "top": "at the top", "bottom": "at the bottom",
            "left": "on the left", "right": "on the right"}.get(cell, f"in the {cell} corner")


def random_shape(rng: random.Random, cx: float, cy: float, kind=None, colour=None) -> Shape:
    size = rng.choice(list(SIZES))
    lo, hi = SIZES[size]
    return Shape(kind or rng.choice(SHAPES), colour or rng.choice(list(COLOURS)), size, rng.choice(FILLS),
                 cx, cy, rng.uniform(lo, hi))


def _clamp(value: float, radius: float) -> float:
    return min(max(value, radius + 0.02), 1 - radius - 0.02)


def random_scene(rng: random.Random, n_shapes: int, kind=None, colour=None) -> Scene:
    """A scene of 1 or 2 shapes with a random neutral background."""
    grey = rng.randint(60, 200)
    tint = rng.randint(-12, 12)
    background = (grey + tint, grey, grey - tint)
    if n_shapes == 1:
        cell = rng.randrange(9)
        shape = random_shape(rng, 0, 0, kind, colour)
        cx = _clamp((cell % 3 + 0.5) / 3 + rng.uniform(-0.04, 0.04), shape.radius)
        cy = _clamp((cell // 3 + 0.5) / 3 + rng.uniform(-0.04, 0.04), shape.radius)
        shape = Shape(**{**shape.__dict__, "cx": cx, "cy": cy})
        return Scene((shape,), background, position=GRID[cell])
    relation = rng.choice(("left-of", "above"))
    first, second = random_shape(rng, 0, 0), random_shape(rng, 0, 0)
    while (second.kind, second.colour) == (first.kind, first.colour):
        second = random_shape(rng, 0, 0)
    across = rng.uniform(0.3, 0.7)
    placed = []
    for shape, along in ((first, 0.27), (second, 0.73)):
        shape = Shape(**{**shape.__dict__, "radius": shape.radius * 0.75})  # two large shapes must not overlap
        a = _clamp(along + rng.uniform(-0.03, 0.03), shape.radius)
        b = _clamp(across + rng.uniform(-0.05, 0.05), shape.radius)
        cx, cy = (a, b) if relation == "left-of" else (b, a)
        placed.append(Shape(**{**shape.__dict__, "cx": cx, "cy": cy}))
    return Scene(tuple(placed), background, relation=relation)


def captions(scene: Scene) -> list[str]:
    """Several phrasings of the same scene, each naming every attribute."""
    if len(scene.shapes) == 1:
        s, where = scene.shapes[0], _position_phrase(scene.position)
        return [
            f"{s.words()} {where}.",
            f"a photo of {s.words()} {where}.",
            f"there is {s.words()} {where} of the picture.",
            f"{where}, {s.words()}.",
            f"{s.words(article=False)}, {scene.position}.",
        ]
    a, b = scene.shapes
    if scene.relation == "left-of":
        return [
            f"{a.words()} to the left of {b.words()}.",
            f"{b.words()} to the right of {a.words()}.",
            f"two shapes: {a.words()} on the left and {b.words()} on the right.",
            f"a photo of {a.words()} and {b.words()} side by side, the {a.kind} on the left.",
            f"{a.words(article=False)} left, {b.words(article=False)} right.",
        ]
    return [
        f"{a.words()} above {b.words()}.",
        f"{b.words()} below {a.words()}.",
        f"two shapes: {a.words()} at the top and {b.words()} at the bottom.",
        f"a photo of {a.words()} over {b.words()}, the {a.kind} on top.",
        f"{a.words(article=False)} top, {b.words(article=False)} bottom.",
    ]


def short_captions(scene: Scene) -> list[str]:
    """Captions naming only colour and kind. Without them every pair in a batch can be told apart by
    colour, size, fill and position alone, and a tiny CLIP never learns the shapes (measured)."""
    def named(s: Shape) -> str:
        return f"{'an' if s.colour[0] in 'aeiou' else 'a'} {s.colour} {s.kind}"

    if len(scene.shapes) == 1:
        return [f"{named(scene.shapes[0])}.", f"a photo of {named(scene.shapes[0])}."]
    a, b = scene.shapes
    return [f"{named(a)} and {named(b)}."]


def _outline(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if kind == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if kind == "star":
        return [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(math.radians(-90 + 36 * i)),
                 cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(math.radians(-90 + 36 * i))) for i in range(10)]
    if kind == "cross":
        t = r * 0.35
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(kind)


def render(scene: Scene, image_size: int, noise_seed: Iterable[int], palette: Optional[dict] = None) -> Image.Image:
    """Draw a scene (supersampled, then downscaled for smooth edges) and add pixel noise; `palette` overrides
    the RGB of named colours (jittered colours)."""
    side = image_size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), scene.background)
    for shape in scene.shapes:
        mask = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy, r = shape.cx * side, shape.cy * side, shape.radius * side
        if shape.kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            draw.polygon(_outline(shape.kind, cx, cy, r), fill=255)
        colour = (palette or {}).get(shape.colour, COLOURS[shape.colour])
        fill = Image.new("RGB", (side, side), colour)
        if shape.fill == "striped":
            stripes = ImageDraw.Draw(fill)
            dark = tuple(int(c * 0.35) for c in colour)
            step = max(4, side // 10)
            for x in range(-side, side, step):  # diagonal stripes, half the period dark
                stripes.polygon([(x, 0), (x + step // 2, 0), (x + step // 2 + side, side), (x + side, side)], fill=dark)
        image.paste(fill, (0, 0), mask)
    image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += np.random.default_rng(list(noise_seed)).normal(0.0, 6.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


_SPLIT_IDS = {"train": 1, "val": 2, "zeroshot": 3, "retrieval": 4}


def _rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"demo:{seed}:{split}:{index}")


def caption_samples(split: str, count: int, seed: int, image_size: int) -> Iterator[dict]:
    """img2dataset-style samples: one scene, one caption phrasing picked at random, metadata in json."""
    for i in range(count):
        rng = _rng(seed, split, i)
        scene = random_scene(rng, 1 if rng.random() < 0.6 else 2)
        detailed, short = captions(scene), short_captions(scene)
        options = detailed + short
        caption = rng.choice(short if rng.random() < SHORT_CAPTION_FRACTION else detailed)
        key = f"{i:09d}"
        meta = {"key": key, "caption": caption, "captions": options, "status": "success",
                "width": image_size, "height": image_size,
                "shapes": [dict(s.__dict__) for s in scene.shapes], "position": scene.position,
                "relation": scene.relation}
        yield {"__key__": key, "jpg": _jpeg(render(scene, image_size, (seed, _SPLIT_IDS[split], i))),
               "txt": caption, "json": json.dumps(meta, sort_keys=True)}


def classification_set_samples(count: int, seed: int, image_size: int) -> Iterator[dict]:
    """One shape per image; the class is its colour and kind (balanced: class = index mod 36)."""
    for i in range(count):
        rng = _rng(seed, "zeroshot", i)
        label = i % len(CLASSNAMES)
        colour, kind = CLASSNAMES[label].split(" ")
        scene = random_scene(rng, 1, kind=kind, colour=colour)
        yield {"__key__": f"s{i:07d}", "jpg": _jpeg(render(scene, image_size, (seed, 3, i))), "cls": str(label)}


def retrieval_set_samples(count: int, seed: int, image_size: int) -> Iterator[dict]:
    """One or two shapes per image, all caption phrasings (one per line) as its texts."""
    for i in range(count):
        rng = _rng(seed, "retrieval", i)
        scene = random_scene(rng, 1 if rng.random() < 0.5 else 2)
        texts = captions(scene)[:CAPTIONS_PER_RETRIEVAL_IMAGE]
        yield {"__key__": f"s{i:07d}", "jpg": _jpeg(render(scene, image_size, (seed, 4, i))), "txt": "\n".join(texts)}


def _chunks(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_split(folder: Path, samples: Iterator[dict], per_shard: int, name_format: str) -> dict:
    sizes = {}
    for n, chunk in enumerate(_chunks(samples, per_shard)):
        name = name_format.format(n)
        sizes[name] = write_shard(folder / name, chunk)
    return sizes


DEMO_SUBFOLDERS = ("train", "val", "zeroshot", "retrieval")
INFO_FILE = "demo_info.json"


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / INFO_FILE).is_file():
        raise UserError(f"--out {out} is not empty and holds no demo data: choose a new or empty folder")
    for sub in DEMO_SUBFOLDERS:  # old demo data: replace it whole so no stale shard survives
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)


def write_demo_data(out: str | Path, *, seed: int = 0, train_samples: int = 6000, val_samples: int = 500,
                    zeroshot_samples: int = 720, retrieval_samples: int = 300, image_size: int = 64,
                    samples_per_shard: int = 500) -> dict:
    """Write the demo data set under `out` (layout in the module docstring); returns demo_info."""
    if min(train_samples, val_samples, zeroshot_samples, retrieval_samples) < 1:
        raise UserError("every demo split needs at least one sample")
    if image_size < 16 or samples_per_shard < 1:
        raise UserError("--image-size must be at least 16 and --samples-per-shard at least 1")
    out = Path(out)
    _prepare_out(out)
    counts = {}
    for split, count in (("train", train_samples), ("val", val_samples)):
        # validation in at least 4 shards so that several loader workers can share it
        per_shard = samples_per_shard if split == "train" else min(samples_per_shard, math.ceil(count / 4))
        sizes = _write_split(out / split, caption_samples(split, count, seed, image_size), per_shard, "{:05d}.tar")
        (out / split / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
        counts[split] = {"samples": count, "shards": len(sizes)}
    for split, samples in (("zeroshot", classification_set_samples(zeroshot_samples, seed, image_size)),
                           ("retrieval", retrieval_set_samples(retrieval_samples, seed, image_size))):
        sizes = _write_split(out / split / "test", samples, samples_per_shard, "{}.tar")
        (out / split / "test" / "nshards.txt").write_text(f"{len(sizes)}\n")
        counts[split] = {"samples": sum(sizes.values()), "shards": len(sizes)}
    (out / "zeroshot" / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (out / "zeroshot" / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (out / "zeroshot" / "dataset_type.txt").write_text("classification\n")
    (out / "retrieval" / "dataset_type.txt").write_text("retrieval\n")
    info = {"seed": seed, "image_size": image_size, "samples_per_shard": samples_per_shard, "splits": counts,
            # relative to `out`, so that the same seed gives the same files wherever they are written
            "train_data": f"train/{{00000..{counts['train']['shards'] - 1:05d}}}.tar",
            "val_data": f"val/{{00000..{counts['val']['shards'] - 1:05d}}}.tar",
            "classes": len(CLASSNAMES)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info
