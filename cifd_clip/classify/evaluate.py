"""Top-1 / top-5 accuracy and mean per-class recall of a classifier on a labelled split (the eval view)."""
from __future__ import annotations

import torch

from ..engine.precision import autocast
from .loader import ClassificationStream, Views


@torch.no_grad()
def evaluate_classifier(net: torch.nn.Module, views: Views, *, batch_size: int = 256, workers: int = 0,
                        device="cpu", precision: str = "fp32") -> dict:
    """{"acc1", "acc5", "mean_per_class_recall", "num_images"} (CLIP_benchmark's metric names)."""
    was_training = net.training
    net.eval()
    stream = ClassificationStream(views, batch_size=batch_size, workers=workers, shuffle=False, drop_last=False)
    num_classes = views.data.num_classes
    correct1 = correct5 = seen = 0
    per_class_hits = torch.zeros(num_classes)
    per_class_count = torch.zeros(num_classes)
    try:
        for batch in stream.iterate(0):
            with autocast(precision, device):
                _, logits = net(batch["image"].to(device))
            labels = batch["label"].to(device)
            top = logits.float().topk(min(5, num_classes), dim=-1).indices
            hit1 = top[:, 0] == labels
            correct1 += int(hit1.sum())
            correct5 += int((top == labels[:, None]).any(-1).sum())
            seen += len(labels)
            per_class_count += torch.bincount(labels.cpu(), minlength=num_classes).float()
            per_class_hits += torch.bincount(labels.cpu()[hit1.cpu()], minlength=num_classes).float()
    finally:
        net.train(was_training)
    present = per_class_count > 0
    return {"acc1": correct1 / seen, "acc5": correct5 / seen if num_classes >= 5 else None,
            "mean_per_class_recall": float((per_class_hits[present] / per_class_count[present]).mean()),
            "num_images": seen}
