"""Evaluate one model on one dataset and return CLIP_benchmark's result dict (plus throughput).

The dict has CLIP_benchmark's keys ("dataset", "model", "pretrained", "task", "metrics", "language")
and ours: "status" ("ok" or "missing"), "num_images", "images_per_second", "seconds",
"dataset_root"; a missing dataset gives status "missing" and "looked_in" instead of metrics.
"""
from __future__ import annotations

import re
import tarfile
import time
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, DataError, UserError
from .datasets import DatasetMissing, build_dataset, canonical_name, default_task, make_loader
from .tasks import DEFAULT_RECALL_K, TASKS


class ThroughputMeter:
    """Wraps a dataloader: counts images, shows a progress bar and times the pass (data + forward)."""

    def __init__(self, loader, desc: str, total: Optional[int], show_progress: bool):
        self.loader, self.desc, self.total, self.show_progress = loader, desc, total, show_progress
        self.images, self.seconds = 0, 0.0

    def __iter__(self):
        from tqdm import tqdm
        bar = tqdm(total=self.total, desc=self.desc, unit="img", disable=not self.show_progress, leave=False)
        start = time.perf_counter()
        try:
            for batch in self.loader:
                n = len(batch[0])
                self.images += n
                bar.update(n)
                yield batch
        finally:
            self.seconds = time.perf_counter() - start
            bar.close()

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def one_line(error: BaseException) -> str:
    """The gist of an error, also when a DataLoader worker wrapped it in a traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch re-raises worker errors with the traceback in the message
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", text.splitlines()[-1].strip())
    elif isinstance(error, tarfile.TarError) and error.args:
        text = f"{error.args[-1] if len(error.args) > 1 else ''} is not a readable tar file ({error.args[0]})".strip()
    return text.splitlines()[0] if text else type(error).__name__


def weights_label(tower) -> str:
    """What CLIP_benchmark would call `pretrained` for this model."""
    return str(tower.extra.get("weights_file") or tower.extra.get("pretrained_tag") or "")


def result_header(dataset: str, model: str, pretrained: str, task: str) -> dict:
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task}


def evaluate_model_on_dataset(tower, dataset: str, dataset_root, task: Optional[str] = None, *, batch_size: int = 64,
                              workers: int = 4, recall_k: Sequence[int] = DEFAULT_RECALL_K, device="cpu",
                              precision: str = "fp32", options: Optional[dict] = None, pretrained: Optional[str] = None,
                              show_progress: bool = True, gallery=None) -> dict:
    """Zero-shot classification or retrieval of `tower` (a cifd_clip.clip_models.LoadedCLIP) on one dataset.

    `task` None means the dataset's own task. `options` go to build_dataset (classnames_file,
    templates_file, annotation_file, captions_per_image, border_crop, split). A dataset root that
    does not exist gives a "missing" result; other bad data raises a UserError. The cross-model tasks
    (`evaluation.cross_model`) need `gallery`, a `cross_model.GallerySource`.
    """
    name = canonical_name(dataset)
    label = weights_label(tower) if pretrained is None else pretrained
    if task in TASKS and TASKS[task].base:
        return _evaluate_cross_model(tower, name, dataset_root, task, label, gallery, batch_size=batch_size,
                                     workers=workers, recall_k=recall_k, device=device, precision=precision,
                                     options=options or {}, show_progress=show_progress)
    try:
        data, info = build_dataset(name, dataset_root, tower.preprocess_val, task, **(options or {}))
    except DatasetMissing as e:
        header = result_header(name, tower.spec, label, task or default_task(name) or "unknown")
        return {**header, "status": "missing", "looked_in": str(e.path), "message": str(e)}

    meter = ThroughputMeter(make_loader(data, info, batch_size, workers), name, info.num_samples, show_progress)
    model = tower.model.to(device)
    try:
        metrics = TASKS[info.task].score()(model, meter, tower.tokenizer, info, device=device, recall_k=recall_k,
                                           precision=precision)
    except (UserError, OSError, ValueError, KeyError, tarfile.TarError) as e:
        error_type = type(e) if type(e) in (UserError, ConfigError, DataError) else DataError
        raise error_type(f"evaluating {name} at {dataset_root} failed: {one_line(e)}") from None
    return {**result_header(name, tower.spec, label, info.task), "metrics": metrics, "language": "en",
            "status": "ok", "num_images": meter.images, "images_per_second": meter.images_per_second,
            "seconds": meter.seconds, "dataset_root": str(Path(dataset_root))}


def _evaluate_cross_model(tower, name: str, dataset_root, task: str, label: str, gallery, *, batch_size: int,
                          workers: int, recall_k, device, precision: str, options: dict, show_progress: bool) -> dict:
    """The student's side timed as `evaluate_model_on_dataset` times a plain task; the gallery read or embedded."""
    from .cross_model import GallerySource, check_widths, embed_set, gallery_for

    if gallery is None:
        GallerySource()  # the sentence that says what a cross-model task needs
    base_task = TASKS[task].base
    meters = []

    def timed(loader, info):
        meters.append(ThroughputMeter(loader, name, info.num_samples, show_progress))
        return meters[-1]

    common = dict(batch_size=batch_size, workers=workers, device=device, precision=precision)
    try:
        teacher = gallery_for(gallery, name, dataset_root, base_task, options, **common)
        check_widths(tower.embed_dim, teacher, name)
        student = embed_set(tower, name, dataset_root, base_task, options, wrap=timed, **common)
        metrics = TASKS[task].score()(student, teacher["embeddings"], base_task, recall_k, where=f"{name}")
    except DatasetMissing as e:
        return {**result_header(name, tower.spec, label, task), "status": "missing", "looked_in": str(e.path),
                "message": str(e)}
    except (UserError, OSError, ValueError, KeyError, tarfile.TarError) as e:
        error_type = type(e) if type(e) in (UserError, ConfigError, DataError) else DataError
        raise error_type(f"evaluating {name} at {dataset_root} failed: {one_line(e)}") from None
    meter = meters[0]
    return {**result_header(name, tower.spec, label, task), "metrics": metrics, "language": "en", "status": "ok",
            "gallery_model": teacher.get("teacher"), "gallery_fingerprint": teacher.get("teacher_fingerprint"),
            "num_images": meter.images, "images_per_second": meter.images_per_second, "seconds": meter.seconds,
            "dataset_root": str(Path(dataset_root))}
