"""Zero-shot classification: a text classifier from class names x templates, then top-k accuracy.

Metric definitions follow CLIP_benchmark 1.6.2 (`metrics/zeroshot_classification.py`): logits are
100 * normalised image features @ the normalised classifier, `acc1`/`acc5` are top-k accuracies
over all images and `mean_per_class_recall` is the recall averaged over the classes that occur in
the targets (sklearn's balanced accuracy). The classifier itself is open_clip's
`build_zero_shot_classifier`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..engine.precision import autocast

Template = Union[str, Callable[[str], str]]


def as_template_functions(templates: Sequence[Template]) -> list[Callable[[str], str]]:
    """CLIP_benchmark's text templates use `{c}`; open_clip's builder wants callables for that."""
    return [t if callable(t) else (lambda c, t=t: t.format(c=c)) for t in templates]


def build_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[Template],
                     device, precision: str = "fp32") -> torch.Tensor:
    """The [D, C] zero-shot classifier (one normalised mean text embedding per class)."""
    from open_clip import build_zero_shot_classifier
    with torch.no_grad(), autocast(precision, device):
        weights = build_zero_shot_classifier(model, tokenizer, list(classnames), as_template_functions(templates),
                                             num_classes_per_batch=10, device=device)
    return weights.float()


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    topk = logits.topk(k, dim=1).indices
    return (topk == targets[:, None]).any(dim=1).float().mean().item()


def mean_per_class_recall(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes present in `targets` (= sklearn's balanced_accuracy_score)."""
    recalls = [(predictions[targets == c] == c).float().mean() for c in targets.unique()]
    return torch.stack(recalls).mean().item()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """acc1, acc5 (None with fewer than 5 classes) and mean_per_class_recall from [N, C] logits."""
    num_classes = logits.shape[1]
    return {
        "acc1": topk_accuracy(logits, targets, 1),
        "acc5": topk_accuracy(logits, targets, 5) if num_classes >= 5 else None,
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), targets),
    }


def evaluate_zeroshot_classification(model, dataloader, tokenizer, classnames: Sequence[str],
                                     templates: Sequence[Template], device, *,
                                     class_mask: Optional[Sequence[bool]] = None, precision: str = "fp32") -> dict:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall of a CLIP model.

    `dataloader` yields (images [B,3,H,W], targets [B]). With `class_mask` (one bool per entry of
    `classnames`, e.g. the 200 ImageNet-R classes among the 1000 ImageNet ones) only the masked
    classes compete, and targets index into that subset.
    """
    if class_mask is not None:
        if len(class_mask) != len(classnames):
            raise ValueError(f"class_mask has {len(class_mask)} entries for {len(classnames)} class names")
        classnames = [c for c, keep in zip(classnames, class_mask) if keep]
    model.eval()
    classifier = build_classifier(model, tokenizer, classnames, templates, device, precision)
    features, targets = image_embeddings(model, dataloader, device, precision=precision)
    return classification_metrics_from_embeddings(features, targets, classifier)


def image_embeddings(model, dataloader, device, *, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image embeddings [N, D] (float32, CPU) and labels [N] of a (images, targets) loader."""
    model.eval()
    all_features, all_targets = [], []
    with torch.no_grad():
        for images, targets in dataloader:
            with autocast(precision, device):
                features = F.normalize(model.encode_image(images.to(device)), dim=-1)
            all_features.append(features.float().cpu())
            all_targets.append(torch.as_tensor(targets).long().cpu())
    if not all_features:
        raise ValueError("the dataloader yielded no images")
    return torch.cat(all_features), torch.cat(all_targets)


def classification_metrics_from_embeddings(features: torch.Tensor, targets: torch.Tensor,
                                           classifier: torch.Tensor) -> dict:
    """CLIP_benchmark's logits (100 · features @ classifier) and their metrics; the labels must index the classes."""
    num_classes = classifier.shape[1]
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"labels run from {targets.min().item()} to {targets.max().item()} "
                         f"but there are {num_classes} classes")
    return classification_metrics(100.0 * features @ classifier.float().cpu(), targets)


def score_task(model, loader, tokenizer, info, *, device, recall_k=(), precision: str = "fp32") -> dict:
    """The zeroshot_classification row of tasks.TASKS: the set's class names and templates from its info."""
    return evaluate_zeroshot_classification(model, loader, tokenizer, info.classnames, info.templates, device,
                                            class_mask=info.class_mask, precision=precision)
