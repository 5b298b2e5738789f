"""Zero-shot image<->text retrieval with several captions per image.

Metric definitions follow CLIP_benchmark 1.6.2 (`metrics/zeroshot_retrieval.py`):
- `image_retrieval_recall@K` (text -> image): the share of captions whose own image is among the K
  images most similar to the caption;
- `text_retrieval_recall@K` (image -> text): the share of images for which at least one of their
  captions is among the K captions most similar to the image.
A K at least as large as the number of candidates counts every query as a hit (CLIP_benchmark
crashes there instead).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..engine.precision import autocast
from .tasks import DEFAULT_RECALL_K

# rows of the similarity matrix handled at once, so COCO's 25k x 5k matrix never needs topk in one piece
CHUNK = 4096


def _hits_at_k(scores: torch.Tensor, is_positive, k: int) -> torch.Tensor:
    """For each row of `scores` [Q, N]: does any of its top-k columns satisfy is_positive(rows, cols)?"""
    k = min(k, scores.shape[1])
    hits = []
    for start in range(0, scores.shape[0], CHUNK):
        rows = torch.arange(start, min(start + CHUNK, scores.shape[0]))
        top = scores[rows].topk(k, dim=1).indices
        hits.append(is_positive(rows[:, None], top).any(dim=1))
    return torch.cat(hits)


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
                      recall_k: Sequence[int] = DEFAULT_RECALL_K) -> dict:
    """Recall@K both ways from normalised embeddings; text i describes image text_to_image[i]."""
    scores = text_emb @ image_emb.T  # [texts, images]
    metrics = {}
    for k in recall_k:
        text_to_image_hits = _hits_at_k(scores, lambda t, i: text_to_image[t] == i, k)
        image_to_text_hits = _hits_at_k(scores.T, lambda i, t: text_to_image[t] == i, k)
        metrics[f"image_retrieval_recall@{k}"] = text_to_image_hits.float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = image_to_text_hits.float().mean().item()
    return metrics


def evaluate_retrieval(model, dataloader, tokenizer, device, recall_k: Sequence[int] = DEFAULT_RECALL_K,
                       *, precision: str = "fp32") -> dict:
    """Image->text and text->image recall@K of a CLIP model.

    `dataloader` yields (images [B,3,H,W], captions) where captions[b] is the list of strings that
    describe image b (any number per image), optionally with a third element, each image's sortable file
    position: the embeddings are then put in that order first, so ties rank the same for any worker count.
    """
    if any(int(k) < 1 for k in recall_k):
        raise ValueError(f"recall@K needs K >= 1, got {list(recall_k)}")
    embeddings = retrieval_embeddings(model, dataloader, tokenizer, device, precision=precision)
    return retrieval_metrics(embeddings["image"], embeddings["text"], embeddings["text_to_image"],
                             [int(k) for k in recall_k])


def retrieval_embeddings(model, dataloader, tokenizer, device, *, precision: str = "fp32") -> dict:
    """{"image" [N, D], "text" [T, D] (normalised, float32, CPU), "text_to_image" [T], "order" (each image's file
    position, [] when the loader gives none)}: in file order when the loader gives positions (see
    `evaluate_retrieval`), so two models' passes over one set line up."""
    model.eval()
    image_embs, text_embs, text_to_image, orders = [], [], [], []
    offset = 0
    with torch.no_grad():
        for images, captions, *order in dataloader:
            orders.extend(order[0] if order else [])
            texts = [c for per_image in captions for c in per_image]
            text_to_image.extend(offset + b for b, per_image in enumerate(captions) for _ in per_image)
            with autocast(precision, device):
                image_embs.append(F.normalize(model.encode_image(images.to(device)), dim=-1).float().cpu())
                if texts:
                    tokens = tokenizer(texts).to(device)
                    text_embs.append(F.normalize(model.encode_text(tokens), dim=-1).float().cpu())
            offset += len(images)
    if not image_embs:
        raise ValueError("the dataloader yielded no images")
    if not text_embs:
        raise ValueError("the dataset has no captions")
    images, texts, owners = torch.cat(image_embs), torch.cat(text_embs), torch.tensor(text_to_image)
    if len(orders) == len(images):
        images, texts, owners = _in_file_order(images, texts, owners, orders)
        orders = sorted(orders)
    else:
        orders = []
    return {"image": images, "text": texts, "text_to_image": owners, "order": list(orders)}


def _in_file_order(images, texts, owners, orders):
    image_perm = sorted(range(len(images)), key=lambda i: orders[i])
    new_index = torch.empty(len(images), dtype=torch.long)
    new_index[torch.tensor(image_perm)] = torch.arange(len(images))
    text_perm = sorted(range(len(texts)), key=lambda t: (int(new_index[owners[t]]), t))
    return images[image_perm], texts[text_perm], new_index[owners[text_perm]]


def score_task(model, loader, tokenizer, info, *, device, recall_k=DEFAULT_RECALL_K, precision: str = "fp32") -> dict:
    """The zeroshot_retrieval row of tasks.TASKS."""
    return evaluate_retrieval(model, loader, tokenizer, device, recall_k, precision=precision)
