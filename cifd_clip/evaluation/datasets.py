"""One builder for every evaluation set, dispatching on the dataset's name.

Names and the layout each expects under ROOT (the user downloads; nothing here downloads):
  wds/NAME      CLIP_benchmark's webdataset layout: ROOT/test/{0..N-1}.tar + ROOT/test/nshards.txt,
                samples = image (webp/png/jpg) + `cls` (classification) or `txt` (retrieval, one caption
                a line); ROOT/classnames.txt, ROOT/zeroshot_classification_templates.txt ({c} lines),
                ROOT/dataset_type.txt ("retrieval" for retrieval sets)
  imagenet1k    ImageNet-1k val as class folders: ROOT/val/<wnid>/*.JPEG (or ROOT/<wnid>/)
  imagenetv2    ImageNetV2 matched-frequency: folders 0..999 in ROOT, ROOT/ImageNetV2-matched-frequency/
                or ROOT/imagenetv2-matched-frequency-format-val/
  imagenet-r    ImageNet-R / ImageNet-A as released: ROOT/<wnid>/ for their 200 classes; evaluated
  imagenet-a    among those 200 ImageNet classes only (a class mask over the 1000)
  objectnet     ObjectNet 1.0: ROOT/objectnet-1.0/images/<folder>/ and its mappings/ folder; the 113
                classes that map to ImageNet, named by ObjectNet's labels (as CLIP_benchmark does), a
                2-pixel border cropped off every image (ObjectNet's red frame; `border_crop: 0` to keep it)
  flickr30k     Karpathy test split: ROOT/dataset_flickr30k.json (or dataset_coco.json) + the images,
  mscoco        5 captions per image (also CLIP_benchmark's flickr30k_test_karpathy.txt /
                coco_test_karpathy.json annotation files)
  folder[:NAME] any class-folder set; class names from `classnames_file` (one a line, in sorted folder
                order) or the folder names, templates from `templates_file` or OpenAI's ImageNet ones
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError, DataError, UserError
from .tasks import CLASSIFICATION, PLAIN_TASKS, RETRIEVAL, webdataset_task

NAMES = ("wds/NAME", "imagenet1k", "imagenetv2", "imagenet-r", "imagenet-a", "objectnet", "flickr30k", "mscoco",
         "folder[:NAME]")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
WDS_IMAGE = "webp;png;jpg;jpeg"
OBJECTNET_BORDER_PX = 2


class DatasetMissing(DataError):
    """The dataset is not on disk: the runner reports it as missing instead of failing."""

    def __init__(self, name: str, path: Path, what: str = ""):
        self.path = Path(path)
        super().__init__(f"dataset {name} is not on disk: {what or 'nothing'} at {self.path}")


@dataclass
class DatasetInfo:
    name: str
    task: str
    root: Path
    classnames: Optional[list] = None
    templates: Optional[list] = None  # format strings with {c}, or callables
    class_mask: Optional[list] = None  # bools over `classnames`; None = all classes
    num_samples: Optional[int] = None  # None when unknown up front (webdataset)
    collate_fn: Optional[Callable] = None
    max_workers: Optional[int] = None  # webdataset: one worker per shard at most
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- small map-style datasets

class ImageFiles:
    """(image, label) pairs from a list of files; labels can be ints or caption lists."""

    def __init__(self, samples: Sequence[tuple[Path, Any]], transform: Optional[Callable]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"could not read image {path} ({e})") from None
        return (self.transform(image) if self.transform else image), target


class CropBorder:
    """Cut `pixels` off every side before the model's own transform (ObjectNet's 1-px red frame)."""

    def __init__(self, pixels: int, transform: Optional[Callable]):
        self.pixels, self.transform = pixels, transform

    def __call__(self, image):
        w, h = image.size
        p = self.pixels
        if p > 0 and w > 2 * p and h > 2 * p:
            image = image.crop((p, p, w - p, h - p))
        return self.transform(image) if self.transform else image


def collate_image_captions(batch):
    """Stack images; keep each image's captions as a list of strings (and each sample's file position, when
    the dataset gives one, so that retrieval can restore file order whatever the loader workers did)."""
    import torch
    columns = list(zip(*batch))
    out = (torch.stack(list(columns[0])), [list(c) for c in columns[1]])
    return out + (list(columns[2]),) if len(columns) > 2 else out


def _with_file_position(samples):
    """Tag each webdataset sample with (shard number, position in its shard). Loader workers read whole shards,
    so the tags are the single-process file order, which retrieval restores (exact ties between duplicate
    captions are broken by position: without this, results would depend on --workers)."""
    counts: dict = {}
    for sample in samples:
        url = sample.get("__url__", "")
        position = counts.get(url, 0)
        counts[url] = position + 1
        try:
            shard = int(Path(url).stem)
        except ValueError:
            shard = 0
        sample["__order__"] = (shard, position)
        yield sample


def _split_captions(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- helpers

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{what} file {path} is empty")
    return lines


def _read_templates(path: Path) -> list[str]:
    templates = _read_lines(path, "templates")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise ConfigError(f"template {bad[0]!r} in {path} has no {{c}} where the class name goes")
    return templates


def _labelled_folder_samples(name: str, root: Path, label_of: dict[str, int], what: str) -> list[tuple[Path, int]]:
    """Images of every class folder in `root`; a folder not in `label_of` is a data error."""
    samples = []
    for folder in _subfolders(root):
        if folder.name not in label_of:
            raise DataError(f"folder {folder} is not one of the {what} of {name}")
        samples.extend((p, label_of[folder.name]) for p in _images_in(folder))
    if not samples:
        raise DataError(f"no images found in the class folders of {root} for {name}")
    return samples


def _imagenet_names_and_templates():
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def _first_existing(candidates: Sequence[Path], test: Callable[[Path], bool] = Path.exists) -> Optional[Path]:
    return next((c for c in candidates if test(c)), None)


# ---------------------------------------------------------------- builders, one per family

def _all_shards(src):
    # evaluation reads every shard in one process; DataLoader workers still split them
    yield from src


def build_wds(name: str, root: Path, transform, split: str = "test", classnames_file=None, templates_file=None,
              **_) -> tuple[Any, DatasetInfo]:
    import webdataset as wds

    split_dir = root / split
    nshards_file = split_dir / "nshards.txt"
    if not nshards_file.is_file():
        raise DataError(f"{root} is not in CLIP_benchmark's webdataset layout: {nshards_file} is missing")
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError:
        raise DataError(f"{nshards_file} must hold the number of shards") from None
    shards = [split_dir / f"{i}.tar" for i in range(nshards)]
    absent = [s for s in shards if not s.is_file()]
    if nshards < 1 or absent:
        raise DataError(f"{nshards_file} announces {nshards} shards but "
                        + (f"{absent[0]} is missing" if absent else "a dataset needs at least one"))
    task = webdataset_task(root)

    pipeline = wds.WebDataset([str(s) for s in shards], shardshuffle=False, nodesplitter=_all_shards,
                              empty_check=False).decode(wds.autodecode.ImageHandler("pil"))
    info = DatasetInfo(name, task, root,
                       max_workers=nshards, extra={"nshards": nshards})
    if task == RETRIEVAL:
        dataset = pipeline.compose(_with_file_position).to_tuple(WDS_IMAGE, "txt", "__order__") \
            .map_tuple(transform, _split_captions, tuple)
        info.collate_fn = collate_image_captions
        return dataset, info

    dataset = pipeline.to_tuple(WDS_IMAGE, "cls").map_tuple(transform, int)
    classnames_path = Path(classnames_file) if classnames_file else root / "classnames.txt"
    templates_path = Path(templates_file) if templates_file else root / "zeroshot_classification_templates.txt"
    if not classnames_path.is_file():
        raise DataError(f"{name} has no class names: {classnames_path} is missing")
    info.classnames = _read_lines(classnames_path, "class names")
    # like CLIP_benchmark, fall back to OpenAI's ImageNet templates when the set brings none
    info.templates = _read_templates(templates_path) if templates_path.is_file() else _imagenet_names_and_templates()[1]
    return dataset, info


def build_imagenet1k(name: str, root: Path, transform, **_):
    from .imagenet_wnids import IMAGENET_WNIDS
    folder = root / "val" if (root / "val").is_dir() else root
    samples = _labelled_folder_samples(name, folder, {w: i for i, w in enumerate(IMAGENET_WNIDS)}, "1000 ImageNet wnids")
    classnames, templates = _imagenet_names_and_templates()
    return ImageFiles(samples, transform), DatasetInfo(name, CLASSIFICATION, folder, classnames, templates,
                                                      num_samples=len(samples))


def imagenet_subset_mask(wnids: Sequence[str]) -> list[bool]:
    """One bool per ImageNet-1k class (in index order): is its wnid in `wnids`?"""
    from .imagenet_wnids import IMAGENET_WNIDS
    wanted = set(wnids)
    return [w in wanted for w in IMAGENET_WNIDS]


def build_imagenet_subset(name: str, root: Path, transform, **_):
    from .imagenet_wnids import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS
    subset = {"imagenet-r": IMAGENET_R_WNIDS, "imagenet-a": IMAGENET_A_WNIDS}[name]
    # the masked classifier keeps ImageNet's order, and subset wnids are sorted the same way
    samples = _labelled_folder_samples(name, root, {w: i for i, w in enumerate(sorted(subset))}, "200 classes")
    classnames, templates = _imagenet_names_and_templates()
    return ImageFiles(samples, transform), DatasetInfo(name, CLASSIFICATION, root, classnames, templates,
                                                      class_mask=imagenet_subset_mask(subset),
                                                      num_samples=len(samples))


def build_imagenetv2(name: str, root: Path, transform, **_):
    folder = _first_existing([root / "ImageNetV2-matched-frequency", root / "imagenetv2-matched-frequency-format-val",
                              root], lambda p: (p / "0").is_dir())
    if folder is None:
        raise DataError(f"{root} holds no ImageNetV2 class folders 0..999")
    samples = _labelled_folder_samples(name, folder, {str(i): i for i in range(1000)}, "class folders 0..999")
    classnames, templates = _imagenet_names_and_templates()
    return ImageFiles(samples, transform), DatasetInfo(name, CLASSIFICATION, folder, classnames, templates,
                                                      num_samples=len(samples))


OBJECTNET_MAPPING_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                           "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")


def read_objectnet_mappings(mappings: Path) -> dict[str, tuple[str, list[int]]]:
    """folder name -> (ObjectNet label, the ImageNet-1k class indices it maps to), for mapped folders only.

    Reads the four files of ObjectNet's `mappings/` folder the way CLIP_benchmark and wise-ft do.
    """
    folder_to_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text())
    label_to_imagenet_names = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text())
    pytorch_to_2012 = json.loads((mappings / "pytorch_to_imagenet_2012_id.json").read_text())
    id2012_to_pytorch = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    imagenet_name_to_index = {line.strip(): id2012_to_pytorch[i] for i, line in
                              enumerate((mappings / "imagenet_to_label_2012_v2").read_text().splitlines())
                              if line.strip()}
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}
    out = {}
    for label, imagenet_names in label_to_imagenet_names.items():
        try:
            indices = [imagenet_name_to_index[n] for n in imagenet_names.split("; ")]
        except KeyError as e:
            raise DataError(f"ObjectNet class {label!r} maps to {e.args[0]!r}, which {mappings} does not know") from None
        out[label_to_folder[label]] = (label, indices)
    return out


def build_objectnet(name: str, root: Path, transform, border_crop: int = OBJECTNET_BORDER_PX, **_):
    base = root / "objectnet-1.0" if (root / "objectnet-1.0").is_dir() else root
    images = base / "images"
    mappings = _first_existing([base / "mappings", root / "mappings", root],
                               lambda p: all((p / f).is_file() for f in OBJECTNET_MAPPING_FILES))
    if not images.is_dir():
        raise DataError(f"{root} is not an ObjectNet folder: {images} is missing")
    if mappings is None:
        raise DataError(f"ObjectNet's mapping files ({', '.join(OBJECTNET_MAPPING_FILES)}) are not in "
                        f"{base / 'mappings'} or {root}")
    mapped = read_objectnet_mappings(mappings)
    folders = sorted(mapped)
    label_of = {f: i for i, f in enumerate(folders)}
    samples = [(p, label_of[d.name]) for d in _subfolders(images) if d.name in label_of for p in _images_in(d)]
    if not samples:
        raise DataError(f"no images of the ImageNet-mapped ObjectNet classes found in {images}")
    imagenet_ids = sorted({i for f in folders for i in mapped[f][1]})
    info = DatasetInfo(name, CLASSIFICATION, base, [mapped[f][0].lower() for f in folders],
                       _imagenet_names_and_templates()[1], num_samples=len(samples),
                       extra={"folder_to_imagenet": {f: mapped[f][1] for f in folders},
                              "imagenet_class_mask": [i in set(imagenet_ids) for i in range(1000)],
                              "border_crop": int(border_crop)})
    return ImageFiles(samples, CropBorder(int(border_crop), transform)), info


def read_caption_annotations(path: Path, split: str = "test") -> list[tuple[str, list[str]]]:
    """(relative image path, captions) from a Karpathy JSON, a COCO-format JSON or CLIP_benchmark's Flickr txt."""
    if path.suffix == ".txt":  # CLIP_benchmark's flickr30k_test_karpathy.txt: header, then `image.jpg,caption`
        per_image: dict[str, list[str]] = {}
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            if line.strip():
                image, caption = line.strip().split(".jpg,", 1)
                per_image.setdefault(image + ".jpg", []).append(caption)
        return list(per_image.items())
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "annotations" in data:  # COCO format (CLIP_benchmark's coco_test_karpathy.json)
        files = {img["id"]: img["file_name"] for img in data["images"]}
        per_id: dict[Any, list[str]] = {i: [] for i in files}
        for ann in data["annotations"]:
            per_id[ann["image_id"]].append(ann["caption"].strip())
        return [(files[i], caps) for i, caps in per_id.items()]
    if isinstance(data, dict) and "images" in data:  # Karpathy's dataset_flickr30k.json / dataset_coco.json
        return [(os.path.join(img.get("filepath", ""), img["filename"]), [s["raw"].strip() for s in img["sentences"]])
                for img in data["images"] if img.get("split") == split]
    raise DataError(f"{path} is neither a Karpathy split JSON nor a COCO captions JSON")


KARPATHY_FILES = {"flickr30k": ("dataset_flickr30k.json", "flickr30k_test_karpathy.txt"),
                  "mscoco": ("dataset_coco.json", "coco_test_karpathy.json")}
IMAGE_DIRS = {"flickr30k": ("", "flickr30k-images", "flickr30k_images", "images", "Images"),
              "mscoco": ("", "val2014", "images")}


def build_karpathy(name: str, root: Path, transform, split: str = "test", annotation_file=None,
                   captions_per_image: int = 5, **_):
    annotation = Path(annotation_file) if annotation_file else \
        _first_existing([root / f for f in KARPATHY_FILES[name]] + [root / "annotations" / f for f in KARPATHY_FILES[name]])
    if annotation is None or not annotation.is_file():
        raise DataError(f"no Karpathy split file for {name}: looked for {' or '.join(KARPATHY_FILES[name])} in {root}"
                        + (f" and for {annotation}" if annotation else ""))
    entries = read_caption_annotations(annotation, split)
    if not entries:
        raise DataError(f"{annotation} has no images in split {split!r}")
    first = entries[0][0]
    image_dir = _first_existing([root / d for d in IMAGE_DIRS[name]], lambda d: (d / first).is_file() or
                                (d / Path(first).name).is_file())
    if image_dir is None:
        raise DataError(f"image {first} of {annotation} is not under {root} (nor its "
                        f"{'/, '.join(d for d in IMAGE_DIRS[name] if d)}/ folders)")
    samples, missing = [], []
    for rel, captions in entries:
        path = image_dir / rel if (image_dir / rel).is_file() else image_dir / Path(rel).name
        (samples if path.is_file() else missing).append((path, captions[:captions_per_image] if captions_per_image
                                                        else captions))
    if missing:
        raise DataError(f"{len(missing)} of the {len(entries)} images of {annotation} are missing, e.g. {missing[0][0]}")
    info = DatasetInfo(name, RETRIEVAL, root, num_samples=len(samples), collate_fn=collate_image_captions,
                       extra={"annotation_file": str(annotation)})
    return ImageFiles(samples, transform), info


def build_folder(name: str, root: Path, transform, classnames_file=None, templates_file=None, **_):
    folders = _subfolders(root)
    if not folders:
        raise DataError(f"{root} has no class folders")
    classnames = _read_lines(Path(classnames_file), "class names") if classnames_file else \
        [f.name.replace("_", " ") for f in folders]
    if len(classnames) != len(folders):
        raise ConfigError(f"{classnames_file} names {len(classnames)} classes but {root} has {len(folders)} class folders")
    samples = _labelled_folder_samples(name, root, {f.name: i for i, f in enumerate(folders)}, "class folders")
    templates = _read_templates(Path(templates_file)) if templates_file else _imagenet_names_and_templates()[1]
    return ImageFiles(samples, transform), DatasetInfo(name, CLASSIFICATION, root, classnames, templates,
                                                      num_samples=len(samples))


ALIASES = {"mscoco_captions": "mscoco", "imagenet-1k": "imagenet1k", "imagenet_v2": "imagenetv2"}
BUILDERS = {"imagenet1k": build_imagenet1k, "imagenetv2": build_imagenetv2, "imagenet-r": build_imagenet_subset,
            "imagenet-a": build_imagenet_subset, "objectnet": build_objectnet, "flickr30k": build_karpathy,
            "mscoco": build_karpathy}
NAMED_SETS = tuple(BUILDERS)  # the sets known by name alone (the others are wds/NAME and folder[:NAME])


def canonical_name(name: str) -> str:
    name = str(name).strip()
    return ALIASES.get(name, name)


def _builder_for(name: str):
    if name.startswith("wds/") and len(name) > 4:
        return build_wds
    if name == "folder" or name.startswith(("folder:", "folder/")):
        return build_folder
    if name in BUILDERS:
        return BUILDERS[name]
    raise ConfigError(f"unknown dataset {name!r}; use one of {', '.join(NAMES)}")


def default_task(name: str) -> Optional[str]:
    """The task a named set is for; None for webdataset sets (their dataset_type.txt says)."""
    name = canonical_name(name)
    _builder_for(name)
    if name.startswith("wds/"):
        return None
    return RETRIEVAL if name in KARPATHY_FILES else CLASSIFICATION


def build_dataset(name: str, root, transform, task: Optional[str] = None, *, split: str = "test",
                  **options) -> tuple[Any, DatasetInfo]:
    """(dataset, info) for the named set at `root`; `task` None means the set's own task.

    The dataset yields (image tensor, class index) or (image tensor, list of captions). Options:
    classnames_file, templates_file (wds/ and folder sets), annotation_file and captions_per_image
    (flickr30k, mscoco), border_crop (objectnet). Raises DatasetMissing when `root` does not exist.
    """
    name = canonical_name(name)
    builder = _builder_for(name)
    if task is not None and task not in PLAIN_TASKS:
        raise ConfigError(f"unknown task {task!r}; use {' or '.join(PLAIN_TASKS)}")
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise DatasetMissing(name, root, "no folder" if not root.exists() else "a file instead of a folder")
    dataset, info = builder(name, root, transform, split=split, **options)
    if task is not None and task != info.task:
        raise UserError(f"dataset {name} at {root} is a {info.task.replace('zeroshot_', '')} set, "
                        f"so it cannot be evaluated with task {task}")
    return dataset, info


def make_loader(dataset, info: DatasetInfo, batch_size: int, workers: int):
    """A DataLoader in file order; a webdataset set gets no more workers than it has shards."""
    import torch
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    workers = max(0, int(workers))
    if info.max_workers is not None:
        workers = min(workers, info.max_workers)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=info.collate_fn)
