"""Cross-model evaluation: a student's queries searched against an index its teacher built.

A team with a teacher-built vector index wants a small model whose *queries* land in the teacher's space.
Two tasks measure that, on any retrieval or classification set `eval` reads:
- `cross_model_retrieval`: the student's captions against the teacher's image embeddings
  (`image_retrieval_recall@K`, text→image as CLIP_benchmark names it) and the student's images against the
  teacher's caption embeddings (`text_retrieval_recall@K`); beside them the teacher–teacher
  (`teacher_*`) and student–student (`student_*`) figures, and `recall_retained`, the mean cross-model recall
  over the mean teacher–teacher recall (the cost of the swap, in one number).
- `cross_model_classification`: the student's images against the teacher's zero-shot classifier (`acc1`,
  `acc5`, `mean_per_class_recall`), the `teacher_*` and `student_*` figures, and `acc1_retained`.

The teacher's side, the *gallery*, is embedded once per set: by `--gallery-model` (written to
`--gallery-embeddings FILE` when one is named) or read back from that file, which records the set and the
teacher's weights fingerprint, so a gallery of another set or teacher is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import DataError, UserError
from .datasets import build_dataset, make_loader
from .tasks import CROSS_TASKS, DEFAULT_RECALL_K, RETRIEVAL, TASKS

BASE_TASK = {name: TASKS[name].base for name in CROSS_TASKS}
GALLERY_FORMAT = "cifd_clip.gallery"
GALLERY_VERSION = 1


@dataclass
class GallerySource:
    """Where the teacher's side comes from: `tower` (the teacher, a cifd_clip LoadedCLIP) embeds the set, `path` is
    a gallery file to read, or to write once the tower has embedded the set. At least one of the two.
    `fingerprint_hint`: the tower's weights fingerprint when the caller has it (one hash of a large teacher per suite)."""
    tower: object = None
    path: Optional[Path] = None
    fingerprint_hint: Optional[str] = None

    def __post_init__(self):
        if self.tower is None and self.path is None:
            raise UserError("a cross-model task needs the teacher's side: pass --gallery-model TEACHER (and "
                            "--gallery-embeddings FILE to keep its embeddings) or --gallery-embeddings FILE "
                            "written by an earlier run")
        self.path = None if self.path is None else Path(self.path)
        self._fingerprint = self.fingerprint_hint

    @property
    def fingerprint(self) -> Optional[str]:
        if self.tower is None:
            return None
        if self._fingerprint is None:
            from ..clip_models import weights_fingerprint
            self._fingerprint = weights_fingerprint(self.tower.model)
        return self._fingerprint


def embed_set(tower, name: str, root, base_task: str, options: dict, *, batch_size: int, workers: int, device,
              precision: str, wrap=None) -> dict:
    """One model's normalised embeddings of one set (`wrap` may wrap the loader, e.g. to time it):
    retrieval {"image", "text", "text_to_image", "order"}; classification {"image", "targets", "classifier"}."""
    from .retrieval import retrieval_embeddings
    from .zeroshot import build_classifier, image_embeddings

    data, info = build_dataset(name, root, tower.preprocess_val, base_task, **options)
    loader = make_loader(data, info, batch_size, workers)
    loader = wrap(loader, info) if wrap is not None else loader
    model = tower.model.to(device).eval()
    if base_task == RETRIEVAL:
        return retrieval_embeddings(model, loader, tower.tokenizer, device, precision=precision)
    classnames = info.classnames
    if info.class_mask is not None:
        classnames = [c for c, keep in zip(classnames, info.class_mask) if keep]
    classifier = build_classifier(model, tower.tokenizer, classnames, info.templates, device, precision).cpu()
    images, targets = image_embeddings(model, loader, device, precision=precision)
    return {"image": images, "targets": targets, "classifier": classifier}


def _identity(name: str, root, base_task: str, options: dict) -> dict:
    return {"dataset": name, "dataset_root": str(Path(root).expanduser().resolve()), "task": base_task,
            "split": options.get("split", "test"), "captions_per_image": options.get("captions_per_image")}


def read_gallery(path: Path) -> dict:
    from ..file_io import check_format, read_torch_file

    gallery = read_torch_file(path, "gallery embeddings")
    return check_format(gallery, path, "a gallery embeddings file (written by eval --gallery-model)", GALLERY_FORMAT,
                        GALLERY_VERSION)


def gallery_for(source: GallerySource, name: str, root, base_task: str, options: dict, **embed_options) -> dict:
    """The teacher's embeddings of the set: read from `source.path` when it holds this set's (and, with a tower,
    this teacher's), else embedded by `source.tower` (and written to `source.path`)."""
    want = _identity(name, root, base_task, options)
    path = source.path
    if path is not None and path.is_file():
        gallery = read_gallery(path)
        have = gallery["identity"]
        differs = [f"{k} {have.get(k)!r} there, {v!r} here" for k, v in want.items() if have.get(k) != v]
        if differs:
            raise UserError(f"gallery embeddings {path} were made on another set ({'; '.join(differs)}): give another "
                            f"gallery file (eval's --gallery-embeddings, bench's --gallery-dir) or remove this one")
        if source.fingerprint is not None and gallery["teacher_fingerprint"] != source.fingerprint:
            raise UserError(f"gallery embeddings {path} were made by another teacher (weights fingerprint "
                            f"{gallery['teacher_fingerprint']}, --gallery-model's {source.fingerprint}); give another "
                            f"gallery file (eval's --gallery-embeddings, bench's --gallery-dir) or remove this one")
        return gallery
    if source.tower is None:
        raise UserError(f"gallery embeddings {path} do not exist: pass --gallery-model TEACHER to make them")
    gallery = {"format": GALLERY_FORMAT, "format_version": GALLERY_VERSION, "identity": want,
               "teacher": source.tower.spec, "teacher_fingerprint": source.fingerprint,
               "embeddings": embed_set(source.tower, name, root, base_task, options, **embed_options)}
    if path is not None:
        from ..file_io import write_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda p: torch.save(gallery, p))
    return gallery


def check_widths(student_dim: int, gallery: dict, where: str) -> None:
    teacher_dim = gallery["embeddings"]["image"].shape[1]
    if student_dim != teacher_dim:
        raise UserError(f"the model embeds into {student_dim} dimensions and the teacher's gallery of {where} into "
                        f"{teacher_dim}: export the student into the teacher's space first (cifd-clip export "
                        f"--space teacher)")


def _check_compatible(student: dict, teacher: dict, base_task: str, where: str) -> None:
    check_widths(student["image"].shape[1], {"embeddings": teacher}, where)
    if len(student["image"]) != len(teacher["image"]):
        raise DataError(f"the model read {len(student['image'])} images of {where} and the gallery holds "
                        f"{len(teacher['image'])}: the set changed since the gallery was made")
    if base_task == RETRIEVAL:
        aligned = torch.equal(student["text_to_image"], teacher["text_to_image"]) and (
            not student["order"] or not teacher["order"] or student["order"] == teacher["order"])
        if not aligned:
            raise DataError(f"the images and captions of {where} come in another order than in the gallery: the set "
                            f"changed since the gallery was made")


def cross_model_metrics(student: dict, teacher: dict, base_task: str, recall_k: Sequence[int] = DEFAULT_RECALL_K,
                        where: str = "the set") -> dict:
    """The task's metrics (module docstring) from the student's and the teacher's embeddings of one set."""
    from .retrieval import retrieval_metrics
    from .zeroshot import classification_metrics_from_embeddings

    _check_compatible(student, teacher, base_task, where)
    if base_task == RETRIEVAL:
        owners, ks = student["text_to_image"], [int(k) for k in recall_k]
        queries_to_teacher_images = retrieval_metrics(teacher["image"], student["text"], owners, ks)
        images_to_teacher_texts = retrieval_metrics(student["image"], teacher["text"], owners, ks)
        metrics = {}
        for k in ks:
            metrics[f"image_retrieval_recall@{k}"] = queries_to_teacher_images[f"image_retrieval_recall@{k}"]
            metrics[f"text_retrieval_recall@{k}"] = images_to_teacher_texts[f"text_retrieval_recall@{k}"]
        for who, embs in (("teacher", teacher), ("student", student)):
            own = retrieval_metrics(embs["image"], embs["text"], owners, ks)
            metrics.update({f"{who}_{key}": value for key, value in own.items()})
        cross = [v for key, v in metrics.items() if "@" in key and not key.startswith(("teacher_", "student_"))]
        reference = [v for key, v in metrics.items() if key.startswith("teacher_")]
        metrics["recall_retained"] = _ratio(sum(cross), sum(reference))
        return metrics
    metrics = classification_metrics_from_embeddings(student["image"], student["targets"], teacher["classifier"])
    for who, embs in (("teacher", teacher), ("student", student)):
        own = classification_metrics_from_embeddings(embs["image"], embs["targets"], embs["classifier"])
        metrics.update({f"{who}_{key}": value for key, value in own.items()})
    metrics["acc1_retained"] = _ratio(metrics["acc1"], metrics["teacher_acc1"])
    return metrics


def _ratio(value: float, reference: float) -> Optional[float]:
    return value / reference if reference > 0 else None
