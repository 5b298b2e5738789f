"""Zero-shot classification of RDM reconstructions, without loading the teacher at RDM time.

`cifd-clip embed --zeroshot-root DIR` runs the teacher once over a zero-shot classification set (any
`cifd_clip.evaluation` dataset, CLIP_benchmark's webdataset layout by default) and every (class, template)
prompt, and stores the embeddings in the cache folder as `zeroshot_eval.pt` (see docs/cache.md):

    {"format": "cifd-clip-zeroshot-eval", "format_version": 1,
     "image_emb": [N, D] (cache dtype), "labels": [N] int64, "text_emb": [C, T, D] (cache dtype),
     "classnames": [C], "templates": [T] ("{c}" marks the class name), "dataset": name, "dataset_root": str,
     "teacher_fingerprint": str, "teacher": {...as in cache.json}, "normalized": bool, "dtype": str}

`cifd-clip train-rdm` then classifies with one modality reconstructed by an RDM and the other from the
teacher: an image RDM's reconstructions against the teacher's text classifier, the teacher's images
against a classifier built from a text RDM's reconstructed prompts. The classifier is open_clip's rule
(per class, the mean over templates of normalised prompt embeddings, renormalised); logits and metrics
are `cifd_clip.evaluation.zeroshot`'s (CLIP_benchmark's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..file_io import check_format, read_torch_file, write_atomic
from ..errors import UserError

FILE_NAME = "zeroshot_eval.pt"
FORMAT = "cifd-clip-zeroshot-eval"
FORMAT_VERSION = 1
# what must agree for an existing file to count as done for this teacher and these settings
SAME_RUN_KEYS = ("format_version", "teacher_fingerprint", "normalized", "dtype", "dataset", "dataset_root")


def _prompts(classnames, templates) -> list[str]:
    from .zeroshot import as_template_functions

    functions = as_template_functions(templates)
    return [f(c) for c in classnames for f in functions]


@torch.no_grad()
def embed_zeroshot_set(teacher, dataset: str, root, *, settings: dict, batch_size: int = 64, workers: int = 0,
                       device="cpu", autocast=None, built=None) -> dict:
    """The teacher's embeddings of a zero-shot set's images and of every (class, template) prompt.

    `teacher` is a `cifd_clip.clip_models.Teacher` (its `normalize` decides normalisation, like the cache);
    `settings` are the cache's (fingerprint, dtype, ...); `built` an already built (dataset, info) pair.
    """
    import contextlib

    from .datasets import make_loader
    from .zeroshot import as_template_functions

    autocast = autocast or contextlib.nullcontext
    data, info = built or build_zeroshot_dataset(dataset, root, teacher.preprocess)
    classnames = list(info.classnames)
    if info.class_mask is not None:  # e.g. ImageNet-R: only its 200 classes compete
        classnames = [c for c, keep in zip(classnames, info.class_mask) if keep]
    dtype = getattr(torch, settings["dtype"])
    images, labels = [], []
    for batch, targets in make_loader(data, info, batch_size, workers):
        with autocast():
            images.append(teacher.encode_image(batch.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets).long())
    if not images:
        raise UserError(f"zero-shot set {root} holds no images")
    prompts = _prompts(classnames, info.templates)
    texts = []
    for start in range(0, len(prompts), batch_size):
        tokens = teacher.tokenizer(prompts[start:start + batch_size]).to(device)
        with autocast():
            texts.append(teacher.encode_text(tokens).float().cpu())
    labels = torch.cat(labels)
    if labels.min() < 0 or labels.max() >= len(classnames):
        raise UserError(f"zero-shot set {root} has labels from {labels.min().item()} to {labels.max().item()} "
                        f"but {len(classnames)} classes")
    templates = [f("{c}") for f in as_template_functions(info.templates)]
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "image_emb": torch.cat(images).to(dtype), "labels": labels,
            "text_emb": torch.cat(texts).view(len(classnames), len(templates), -1).to(dtype),
            "classnames": classnames, "templates": templates, "dataset": dataset,
            "dataset_root": str(Path(root).resolve()), "teacher_fingerprint": settings["teacher_fingerprint"],
            "teacher": dict(settings.get("teacher") or {}), "normalized": bool(settings["normalized"]),
            "dtype": settings["dtype"]}


def build_zeroshot_dataset(dataset: str, root, preprocess):
    """(dataset, info) of a classification set; one sentence if it is missing or a retrieval set."""
    from .datasets import CLASSIFICATION, build_dataset

    return build_dataset(dataset, root, preprocess, CLASSIFICATION)


def is_done(path, settings: dict, dataset: str, root) -> bool:
    """True when `path` already holds this teacher's embeddings of this set with these settings."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        have = read_zeroshot_eval(path)
    except UserError:
        return False
    want = {"format_version": FORMAT_VERSION, "teacher_fingerprint": settings["teacher_fingerprint"],
            "normalized": bool(settings["normalized"]), "dtype": settings["dtype"], "dataset": dataset,
            "dataset_root": str(Path(root).resolve())}
    return all(have.get(k) == want[k] for k in SAME_RUN_KEYS)


def write_zeroshot_eval(path, payload: dict) -> Path:
    """torch.save, atomically: never a half-written file."""
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def read_zeroshot_eval(path) -> dict:
    payload = read_torch_file(path, "zero-shot eval file", "; make it with cifd-clip embed --zeroshot-root")
    check_format(payload, path, "a cifd-clip zero-shot eval file", FORMAT, FORMAT_VERSION,
                 remedy="written by cifd-clip embed --zeroshot-root")
    payload["path"] = str(path)
    return payload


def check_matches_cache(payload: dict, meta: dict) -> None:
    """Refuse a zero-shot file made by another teacher (or of other widths) than the embedding cache."""
    if payload.get("teacher_fingerprint") != meta.get("teacher_fingerprint"):
        raise UserError(f"zero-shot eval file {payload.get('path')} was made by another teacher (weights fingerprint "
                        f"{payload.get('teacher_fingerprint')!r}, the cache's is {meta.get('teacher_fingerprint')!r}); "
                        f"re-run cifd-clip embed --zeroshot-root with this cache's teacher")
    dims = (payload["image_emb"].shape[-1], payload["text_emb"].shape[-1])
    if dims != (meta["image_dim"], meta["text_dim"]):
        raise UserError(f"zero-shot eval file {payload.get('path')} holds {dims[0]}/{dims[1]}-d image/text "
                        f"embeddings but the cache {meta['image_dim']}/{meta['text_dim']}-d ones")


# ---------------------------------------------------------------- classification


def classifier_from_prompts(text_emb: torch.Tensor) -> torch.Tensor:
    """[D, C] from prompt embeddings [C, T, D]: open_clip's build_zero_shot_classifier rule."""
    weights = F.normalize(text_emb.float(), dim=-1).mean(dim=1)
    return F.normalize(weights, dim=-1).T


def accuracy(image_emb: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor) -> dict:
    """{"zeroshot_acc1", "zeroshot_acc5" (only with >= 5 classes)} of images [N, D] against classifier [D, C]."""
    from .zeroshot import classification_metrics

    logits = 100.0 * F.normalize(image_emb.float(), dim=-1) @ classifier.float()
    metrics = classification_metrics(logits, labels)
    out = {"zeroshot_acc1": metrics["acc1"]}
    if metrics["acc5"] is not None:
        out["zeroshot_acc5"] = metrics["acc5"]
    return out


@torch.no_grad()
def zeroshot_metrics(payload: dict, *, image_fn: Optional[Callable] = None, text_fn: Optional[Callable] = None,
                     batch_size: int = 4096) -> dict:
    """Zero-shot accuracy with the images passed through `image_fn` and/or the prompts through `text_fn`
    (an RDM's rounded reconstruction, say); neither gives the teacher's own accuracy."""
    def apply(fn, x):
        if fn is None:
            return x.float()
        return torch.cat([fn(x[i:i + batch_size].float()).float().cpu() for i in range(0, len(x), batch_size)])

    text = payload["text_emb"]
    prompts = apply(text_fn, text.reshape(-1, text.shape[-1])).view(*text.shape[:2], -1)
    return accuracy(apply(image_fn, payload["image_emb"]), classifier_from_prompts(prompts), payload["labels"])
