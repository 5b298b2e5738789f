"""Replayable image augmentation: random crop + horizontal flip described by a few numbers.

The embed stage stores, for each augmented view it sends through the teacher, the parameters of that
view; a student replays them on the same source image at its own resolution and so sees the content
the teacher saw, without a teacher forward pass (MobileCLIP's `paug.json` idea).

A view's parameters are `[x0, y0, w, h, flip]`: the crop box in coordinates relative to the image's
width and height (0..1) and 1.0 when the crop is mirrored left-right. `apply_params` crops and flips
the PIL image only; each model's own eval preprocess (resize shortest side, centre crop, normalise)
then brings it to that model's resolution. Because that preprocess is the same up to scale for any
square input size, teacher and student see the same region of the image.

View 0 is always the plain image, `[0, 0, 1, 1, 0]`, which is exactly the teacher's eval input, so a
cache with one view per sample equals an online teacher without augmentation.

Parameters come from a generator seeded by (seed, sample key): the same key gets the same views
whatever the order, rank or worker it is processed on.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

IDENTITY = (0.0, 0.0, 1.0, 1.0, 0.0)
PARAMS_LEN = len(IDENTITY)


@dataclass(frozen=True)
class AugmentSettings:
    """How augmented views are drawn (recorded in cache.json; a cache is refused if these differ)."""

    views: int = 1
    scale: tuple = (0.35, 1.0)  # fraction of the image area kept by the crop
    ratio: tuple = (3 / 4, 4 / 3)  # aspect ratio range of the crop box, in pixels
    flip_prob: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"], d["ratio"] = [float(v) for v in self.scale], [float(v) for v in self.ratio]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentSettings":
        return cls(views=int(d["views"]), scale=tuple(d["scale"]), ratio=tuple(d["ratio"]),
                   flip_prob=float(d["flip_prob"]), seed=int(d["seed"]))


def key_rng(seed: int, key: str, *extra: int) -> np.random.Generator:
    """A generator that depends only on (seed, key, extra...): stable across processes and runs."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8")), *[int(e) for e in extra]])


def sample_crop(rng: np.random.Generator, width: int, height: int, scale: Sequence[float],
                ratio: Sequence[float], flip_prob: float) -> tuple:
    """One random view's parameters for an image of `width` x `height` pixels (RandomResizedCrop's rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    flip = float(rng.random() < flip_prob)
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (x0 / width, y0 / height, w / width, h / height, flip)
    # Fallback (extreme aspect ratios): the largest centred box within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return ((width - w) / 2 / width, (height - h) / 2 / height, w / width, h / height, flip)


def sample_views(settings: AugmentSettings, key: str, width: int, height: int) -> np.ndarray:
    """Parameters of all `settings.views` views of one sample, float32 [K, 5]; row 0 is the plain image."""
    rng = key_rng(settings.seed, key)
    rows = [IDENTITY]
    for _ in range(settings.views - 1):
        rows.append(sample_crop(rng, width, height, settings.scale, settings.ratio, settings.flip_prob))
    return np.asarray(rows, dtype=np.float32)


def is_identity(params: Sequence[float]) -> bool:
    return tuple(float(p) for p in params) == IDENTITY


def apply_params(image, params: Sequence[float]):
    """Crop and flip a PIL image as `params` say; the identity view returns the image itself."""
    if is_identity(params):
        return image
    x0, y0, w, h, flip = (float(p) for p in params)
    width, height = image.size
    left, top = int(round(x0 * width)), int(round(y0 * height))
    right = min(width, max(left + 1, int(round((x0 + w) * width))))
    bottom = min(height, max(top + 1, int(round((y0 + h) * height))))
    out = image.crop((left, top, right, bottom))
    if flip >= 0.5:
        from PIL import Image
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out
