"""A procedural CIFAR-like set for the classification demo, the gap test bed and tests: the built-in shape
scenes at 32×32, written in torchvision's CIFAR-100 pickle layout so that they read through the same reader as
the real CIFAR-100 (`cifar100:DIR`).

Two tasks (`task=`):
- `colour-kind` (the demo's, 36 classes): one large shape; the class is its colour and kind.
- `gap` (the gap test bed's, 72 classes): the class is the colour, kind and fill (plain or striped) of the
  large shape, drawn over a smaller distractor shape of another class and with the colours jittered, so that
  a classifier has to find the large shape, read its outline and its texture: a small CNN with a short
  receptive field cannot, a deeper one can (docs/studies/gap-testbeds.md measures the gap).
Every image is a function of (seed, split, index): a set of N training samples is the first N of a larger
one, so a student's subset is nested in its teacher's training set by construction.
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np

from ..data.shapes import CLASSNAMES, COLOURS, FILLS, SHAPES, Scene, Shape, render
from ..errors import UserError

TASKS = ("colour-kind", "gap")
GAP_CLASSNAMES = tuple(f"{fill} {name}" for name in CLASSNAMES for fill in FILLS)


def classnames(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise UserError(f"unknown shapes task {task!r}: use one of {', '.join(TASKS)}")
    return CLASSNAMES if task == "colour-kind" else GAP_CLASSNAMES


def _jittered(colour: str, rng: random.Random) -> tuple:
    return tuple(int(min(255, max(0, c + rng.randint(-30, 30)))) for c in COLOURS[colour])


def _colour_kind_scene(rng: random.Random, label: int) -> Scene:
    colour, kind = CLASSNAMES[label].split(" ")
    # one large shape near the centre: at 32 px a small one would be a few pixels, its kind unreadable
    radius = rng.uniform(0.26, 0.4)
    grey, tint = rng.randint(60, 200), rng.randint(-12, 12)
    shape = Shape(kind, colour, "large", rng.choice(FILLS), rng.uniform(radius, 1 - radius),
                  rng.uniform(radius, 1 - radius), radius)
    return Scene((shape,), (grey + tint, grey, grey - tint))


def _gap_scene(rng: random.Random, label: int) -> tuple[Scene, dict]:
    fill, colour, kind = GAP_CLASSNAMES[label].split(" ")
    radius = rng.uniform(0.27, 0.36)
    grey, tint = rng.randint(60, 200), rng.randint(-12, 12)
    main = Shape(kind, colour, "large", fill, rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius),
                 radius)
    while True:  # a distractor of another class, smaller, in the corner farthest from the main shape
        other = (rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(FILLS))
        if other != (kind, colour, fill):
            break
    small = rng.uniform(0.13, 0.17)
    cx = small + 0.02 if main.cx > 0.5 else 1 - small - 0.02
    cy = small + 0.02 if main.cy > 0.5 else 1 - small - 0.02
    distractor = Shape(other[0], other[1], "small", other[2], cx, cy, small)
    palette = {colour: _jittered(colour, rng), other[1]: _jittered(other[1], rng)}
    return Scene((distractor, main), (grey + tint, grey, grey - tint)), palette


def _images(count: int, seed: int, split: int, image_size: int, task: str) -> tuple[np.ndarray, list[int]]:
    data = np.empty((count, 3 * image_size * image_size), dtype=np.uint8)
    labels = []
    names = classnames(task)
    for i in range(count):
        rng = random.Random(f"cls:{seed}:{split}:{i}" if task == "colour-kind" else f"cls-{task}:{seed}:{split}:{i}")
        label = rng.randrange(len(names))
        if task == "colour-kind":
            scene, palette = _colour_kind_scene(rng, label), None
        else:
            scene, palette = _gap_scene(rng, label)
        image = np.asarray(render(scene, image_size, (seed, 7, split, i), palette=palette).convert("RGB"),
                           dtype=np.uint8)
        data[i] = image.transpose(2, 0, 1).reshape(-1)
        labels.append(label)
    return data, labels


def write_shapes_cifar(out: str | Path, *, train_samples: int = 5000, test_samples: int = 1000, seed: int = 0,
                       image_size: int = 32, task: str = "colour-kind") -> Path:
    """Write OUT/cifar-100-python/{train,test,meta} (the fields torchvision's CIFAR100 reads)."""
    names = classnames(task)
    if min(train_samples, test_samples) < 1:
        raise UserError("the shapes set needs at least one training and one test sample")
    folder = Path(out) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, index in (("train", train_samples, 0), ("test", test_samples, 1)):
        data, labels = _images(count, seed, index, image_size, task)
        payload = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * count,
                   b"filenames": [f"{split}_{i:06d}.png".encode() for i in range(count)]}
        with open(folder / split, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.replace(" ", "_").encode() for n in names],
                     b"coarse_label_names": [b"all"]}, f, protocol=2)
    return Path(out)
