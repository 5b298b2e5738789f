"""A procedural CIFAR-like set for the classification demo and tests: the built-in shape scenes at 32×32, 36
classes (6 shapes × 6 colours), written in torchvision's CIFAR-100 pickle layout so that the demo reads it
through the same reader as the real CIFAR-100 (`cifar100:DIR`)."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np

from ..data.shapes import CLASSNAMES, FILLS, Scene, Shape, render
from ..errors import UserError


def _images(count: int, seed: int, split: int, image_size: int) -> tuple[np.ndarray, list[int]]:
    data = np.empty((count, 3 * image_size * image_size), dtype=np.uint8)
    labels = []
    for i in range(count):
        rng = random.Random(f"cls:{seed}:{split}:{i}")
        label = rng.randrange(len(CLASSNAMES))
        colour, kind = CLASSNAMES[label].split(" ")
        # one large shape near the centre: at 32 px a small one would be a few pixels, its kind unreadable
        radius = rng.uniform(0.26, 0.4)
        grey, tint = rng.randint(60, 200), rng.randint(-12, 12)
        shape = Shape(kind, colour, "large", rng.choice(FILLS), rng.uniform(radius, 1 - radius),
                      rng.uniform(radius, 1 - radius), radius)
        scene = Scene((shape,), (grey + tint, grey, grey - tint))
        image = np.asarray(render(scene, image_size, (seed, 7, split, i)).convert("RGB"), dtype=np.uint8)
        data[i] = image.transpose(2, 0, 1).reshape(-1)
        labels.append(label)
    return data, labels


def write_shapes_cifar(out: str | Path, *, train_samples: int = 5000, test_samples: int = 1000, seed: int = 0,
                       image_size: int = 32) -> Path:
    """Write OUT/cifar-100-python/{train,test,meta} (the fields torchvision's CIFAR100 reads)."""
    if min(train_samples, test_samples) < 1:
        raise UserError("the shapes set needs at least one training and one test sample")
    folder = Path(out) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, index in (("train", train_samples, 0), ("test", test_samples, 1)):
        data, labels = _images(count, seed, index, image_size)
        payload = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * count,
                   b"filenames": [f"{split}_{i:06d}.png".encode() for i in range(count)]}
        with open(folder / split, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.replace(" ", "_").encode() for n in CLASSNAMES],
                     b"coarse_label_names": [b"all"]}, f, protocol=2)
    return Path(out)
