"""Image-classification data: CIFAR-100 (torchvision's python-pickle layout), ImageFolder, and webdataset shards
with a `cls` member, behind one map-style interface, with the field's augmentations as replayable views.

A data spec names the source: `cifar100:DIR` (DIR holds `cifar-100-python/`, or is it), `imagefolder:DIR`
(DIR/train/<class>/..., DIR/val/<class>/...), `wds:SHARDS` (brace-expanded tars whose samples have an image
and `cls`; the split is part of the shard list). Nothing is ever downloaded.

Augmentation views are `[x0, y0, w, h, flip]` boxes relative to the image (as the CLIP cache stores them):
CIFAR's "random crop 32 with 4 pixels of padding + flip" is a box on the padded 40×40 canvas; ImageNet's
RandomResizedCrop is a box on the image, then resized to 224. A view drawn from (seed, epoch, index) is the
same in any worker, on any rank, and after a resume.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError, UserError

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ---------------------------------------------------------------- reading the sources


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's files are pickles of dicts of numpy arrays and lists: nothing else may be built from them (a
    pickle can name any callable, so an untrusted file must not reach the plain unpickler)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file")


def _read_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} does not exist: a CIFAR-100 folder holds cifar-100-python/{{train,test,meta}} "
                        f"(torchvision's layout; cifd-clip never downloads it)")
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is not a readable CIFAR-100 pickle ({str(e).splitlines()[0][:120]})") from None


@dataclass
class ClassificationSet:
    """A split of a labelled image set: `len`, `image(i)` (PIL, RGB), `labels` [N], `keys`, `classnames`."""

    name: str
    labels: np.ndarray
    keys: list
    classnames: list
    kind: str  # "cifar" or "imagenet": which augmentation and normalisation the field uses
    _images: object = None
    _paths: list = field(default_factory=list)
    _members: list = field(default_factory=list)  # wds: (tar path, offset, size) of each image member

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def image(self, index: int):
        from PIL import Image

        if self._images is not None:  # CIFAR arrays [N, 3, 32, 32]
            return Image.fromarray(np.ascontiguousarray(self._images[index].transpose(1, 2, 0)))
        try:
            if self._paths:
                with Image.open(self._paths[index]) as im:
                    return im.convert("RGB")
            tar, offset, size = self._members[index]
            with open(tar, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"image {self.keys[index]} of {self.name} is unreadable ({e})") from None


def _cifar100(root: Path, split: str) -> ClassificationSet:
    folder = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    data = _read_cifar_pickle(folder / ("train" if split == "train" else "test"))
    meta = _read_cifar_pickle(folder / "meta")
    try:
        images = np.asarray(data[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(data[b"fine_labels"], dtype=np.int64)
        classnames = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]]
    except (KeyError, ValueError) as e:
        raise DataError(f"{folder} is not in torchvision's CIFAR-100 layout ({e})") from None
    if len(images) != len(labels) or (len(labels) and labels.max() >= len(classnames)):
        raise DataError(f"{folder}: {len(images)} images, {len(labels)} labels and {len(classnames)} class names "
                        f"do not fit together")
    keys = [f"{split}/{i:06d}" for i in range(len(labels))]
    return ClassificationSet(f"cifar100:{root}", labels, keys, classnames, "cifar", _images=images)


def _image_folder(root: Path, split: str) -> ClassificationSet:
    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: an ImageFolder set holds train/<class>/... and val/<class>/...")
    classnames = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classnames) < 2:
        raise DataError(f"{folder} holds {len(classnames)} class folder(s); a classification set needs at least 2")
    paths, labels = [], []
    for label, name in enumerate(classnames):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    keys = [str(p.relative_to(folder)) for p in paths]
    return ClassificationSet(f"imagefolder:{root}", np.asarray(labels, dtype=np.int64), keys, classnames,
                             "imagenet", _paths=paths)


def _wds(spec: str) -> ClassificationSet:
    """Index every sample's image member by byte offset (tar headers only): then it is map-style."""
    from ..data.shards import expand_urls

    members, labels, keys = [], [], []
    for url in expand_urls(spec):
        path = Path(url)
        if not path.is_file():
            raise DataError(f"shard {url} does not exist")
        samples: dict = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, _, ext = info.name.rpartition("/")[2].partition(".")
                    entry = samples.setdefault(key, {})
                    if ext.lower() in ("jpg", "jpeg", "png", "webp"):
                        entry["image"] = (str(path), info.offset_data, info.size)
                    elif ext == "cls":
                        entry["cls"] = int(tar.extractfile(info).read().decode().strip())
        except (tarfile.TarError, ValueError, OSError) as e:
            raise DataError(f"shard {url} is unreadable or has a non-integer cls member ({e})") from None
        for key, entry in samples.items():
            if "image" in entry and "cls" in entry:
                members.append(entry["image"])
                labels.append(entry["cls"])
                keys.append(key)
    if not labels:
        raise DataError(f"{spec} holds no sample with an image and a cls member")
    num_classes = max(labels) + 1
    return ClassificationSet(f"wds:{spec}", np.asarray(labels, dtype=np.int64), keys,
                             [str(c) for c in range(num_classes)], "imagenet", _members=members)


def open_set(spec: str, split: str) -> ClassificationSet:
    """The `split` ("train" or "val") of the data `spec` names (see the module docstring)."""
    kind, sep, rest = str(spec).partition(":")
    if not sep or kind not in ("cifar100", "imagefolder", "wds"):
        raise UserError(f"data {spec!r} must name its kind: cifar100:DIR, imagefolder:DIR or wds:SHARDS")
    if kind == "wds":
        return _wds(rest)
    root = Path(rest).expanduser()
    if not root.is_dir():
        raise DataError(f"{kind} folder {root} does not exist")
    return _cifar100(root, split) if kind == "cifar100" else _image_folder(root, split)


# ---------------------------------------------------------------- augmentation views


@dataclass(frozen=True)
class Recipe:
    """The field's standard pipeline for a kind of data: training view sampler, eval view, resolution."""

    kind: str  # "cifar" | "imagenet"
    image_size: int
    mean: tuple
    std: tuple


def recipe_for(kind: str, image_size: Optional[int] = None) -> Recipe:
    if kind == "cifar":
        return Recipe("cifar", image_size or 32, CIFAR_MEAN, CIFAR_STD)
    return Recipe("imagenet", image_size or 224, IMAGENET_MEAN, IMAGENET_STD)


PLAIN = (0.0, 0.0, 1.0, 1.0, 0.0)


def sample_view(recipe: Recipe, rng: np.random.Generator, width: int, height: int) -> tuple:
    """One random training view: CIFAR's pad-4 crop + flip, or RandomResizedCrop (0.08-1, 3/4-4/3) + flip."""
    flip = float(rng.random() < 0.5)
    if recipe.kind == "cifar":
        pad = 4 / (recipe.image_size + 8)  # the 32x32 box on the padded 40x40 canvas
        x0, y0 = rng.integers(0, 9) / (recipe.image_size + 8), rng.integers(0, 9) / (recipe.image_size + 8)
        return (float(x0), float(y0), 1 - 2 * pad, 1 - 2 * pad, flip)
    from ..data.augment import sample_crop
    return sample_crop(rng, width, height, (0.08, 1.0), (3 / 4, 4 / 3), 0.0)[:4] + (flip,)


def view_tensor(recipe: Recipe, image, view: tuple, train: bool):
    """The normalised tensor of `image` seen through `view` (CIFAR boxes live on the padded canvas)."""
    import torch
    from PIL import Image, ImageOps
    from torchvision.transforms import functional as TF

    x0, y0, w, h, flip = view
    if recipe.kind == "cifar":
        canvas = ImageOps.expand(image, border=4, fill=0) if tuple(view) != PLAIN else image
        W, H = canvas.size
        box = (round(x0 * W), round(y0 * H), round(x0 * W) + round(w * W), round(y0 * H) + round(h * H))
        out = canvas.crop(box) if tuple(view) != PLAIN else canvas
        out = out.resize((recipe.image_size, recipe.image_size), Image.BILINEAR) if out.size != (
            recipe.image_size, recipe.image_size) else out
    elif train or tuple(view) != PLAIN:
        W, H = image.size
        box = (round(x0 * W), round(y0 * H), max(round(x0 * W) + 1, round((x0 + w) * W)),
               max(round(y0 * H) + 1, round((y0 + h) * H)))
        out = image.crop(box).resize((recipe.image_size, recipe.image_size), Image.BILINEAR)
    else:  # eval: resize the short side to 256/224 of the size, centre crop
        out = TF.center_crop(TF.resize(image, round(recipe.image_size * 256 / 224)), recipe.image_size)
    if flip >= 0.5:
        out = ImageOps.mirror(out)
    tensor = TF.to_tensor(out)
    return TF.normalize(tensor, recipe.mean, recipe.std) if isinstance(tensor, torch.Tensor) else tensor
