"""CRD (Tian et al. 2020): contrastive representation distillation between projected features."""
from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...core import losses as L
from ...errors import UserError
from .. import losses as CL
from ..settings import CRD_MEMORY_AUTO_MIB
from .base import ClassifyMethod

log = logging.getLogger(__name__)


class CRD(ClassifyMethod):
    """Projections of both features (trainable, in the method), a contrastive term and KD. `--crd-negatives memory`
    (the paper's): NCE against momentum memory banks of every training sample (`ContrastMemory`); `batch`: an
    in-batch InfoNCE, the other samples of the batch as negatives."""

    def __init__(self, settings, *, student_dim: int, teacher_dim: int, train_labels=None, **_):
        super().__init__(settings)
        self.embed_student = nn.Linear(student_dim, settings.crd_dim)
        self.embed_teacher = nn.Linear(teacher_dim, settings.crd_dim)
        self.negatives = resolve_negatives(settings, None if train_labels is None else len(train_labels))
        if self.negatives == "memory":
            self.memory = ContrastMemory(train_labels, settings.crd_dim, settings.crd_nce_k, settings.crd_temperature,
                                         settings.crd_momentum)

    def forward(self, student, targets, generator=None):
        s = F.normalize(self.embed_student(student.features), dim=-1)
        t = F.normalize(self.embed_teacher(targets.features.detach()), dim=-1)
        if self.negatives == "memory":
            crd = self.memory(s, t, targets.indices, generator)
        else:
            crd = L.in_batch_contrastive(s, t, self.s.crd_temperature)
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator),
                "crd": self.s.crd_weight * crd}


def resolve_negatives(settings, num_samples: Optional[int]) -> str:
    """`--crd-negatives auto`: the memory banks when the training set's size is known and its banks are small."""
    if settings.crd_negatives == "batch":
        return "batch"
    if num_samples is None:
        if settings.crd_negatives == "memory":
            raise UserError("--crd-negatives memory needs the training set's labels (its memory banks are per sample)")
        return "batch"
    mib = 2 * num_samples * settings.crd_dim * 4 / 2 ** 20
    if settings.crd_negatives == "auto" and mib > CRD_MEMORY_AUTO_MIB:
        log.info("CRD: in-batch negatives (--crd-negatives auto: memory banks for %d samples would take %.0f MiB, "
                 "over %d MiB)", num_samples, mib, CRD_MEMORY_AUTO_MIB)
        return "batch"
    log.info("CRD: memory banks of %d samples x %d dims (%.1f MiB)", num_samples, settings.crd_dim, mib)
    return "memory"


class ContrastMemory(nn.Module):
    """RepDistiller's ContrastMemory in the paper's `exact` mode: two banks [N, d] (the student's and the teacher's
    projected features of every training sample, unit norm), the positive of sample i its own entry and the K
    negatives entries of other classes drawn uniformly (from the step's generator). Scores exp(·/τ)/Z, with Z
    fixed at the first step (mean score × N, averaged over ranks). After scoring, each sample's entries move
    to normalize(m·old + (1 − m)·new), with every rank's samples gathered first so that all ranks hold the same
    banks. The banks and Z are buffers: checkpointed and resumed exactly."""

    def __init__(self, train_labels, dim: int, nce_k: int, temperature: float, momentum: float):
        super().__init__()
        labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
        n = len(labels)
        if nce_k > n - 1:
            log.info("CRD: --crd-nce-k %d clamped to %d (the training set's size - 1)", nce_k, n - 1)
        self.nce_k, self.temperature, self.momentum = min(nce_k, n - 1), temperature, momentum
        bound = 1 / math.sqrt(dim / 3)  # RepDistiller's initial banks: uniform in [-bound, bound]
        self.register_buffer("bank_student", torch.rand(n, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("bank_teacher", torch.rand(n, dim).mul_(2 * bound).sub_(bound))
        # Z of the student's scores (against the teacher's bank) and of the teacher's (against the student's)
        self.register_buffer("normalizers", torch.full((2,), -1.0))
        order = torch.argsort(labels, stable=True)  # sample indices grouped by class
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        if (counts == n).any():
            raise UserError("CRD's memory draws its negatives from other classes, but every sample has one label")
        self.register_buffer("by_class", order, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("labels", labels, persistent=False)

    def contrast_indices(self, indices: torch.Tensor, generator=None) -> torch.Tensor:
        """[B, 1 + K]: each sample's own index, then K indices of samples of other classes."""
        labels = self.labels[indices]
        start, count = self.class_start[labels].cpu(), self.class_count[labels].cpu()
        pool = len(self.labels) - count  # the samples of other classes
        draws = torch.rand(len(indices), self.nce_k, generator=generator)
        rank = torch.minimum((draws * pool[:, None]).long(), pool[:, None] - 1)
        rank = rank + torch.where(rank >= start[:, None], count[:, None], 0)  # skip over the sample's own class
        negatives = self.by_class[rank.to(self.by_class.device)]
        return torch.cat([indices[:, None], negatives], 1)

    def scores(self, bank: torch.Tensor, contrast: torch.Tensor, anchor: torch.Tensor, which: int) -> torch.Tensor:
        """exp(bank[contrast] · anchor / τ) / Z, Z set from the first batch's mean."""
        entries = bank[contrast].detach()  # [B, 1 + K, d]
        out = torch.exp(torch.bmm(entries, anchor[:, :, None]).squeeze(-1) / self.temperature)
        if self.normalizers[which] < 0:
            self.normalizers[which] = _mean_over_ranks(out.detach().mean()) * len(bank)
            log.info("CRD: normalisation constant of the %s's scores Z = %.1f", ("student", "teacher")[which],
                     float(self.normalizers[which]))
        return out / self.normalizers[which].clone()  # a copy: the other side may still set its Z in place

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, indices: torch.Tensor, generator=None):
        if indices is None:
            raise UserError("CRD's memory needs each sample's index in the batch ('index')")
        contrast = self.contrast_indices(indices, generator)
        # the student anchored against the teacher's bank, and the teacher's projection against the student's
        loss = (CL.nce_contrast_loss(self.scores(self.bank_teacher, contrast, student, 0), len(self.labels)) +
                CL.nce_contrast_loss(self.scores(self.bank_student, contrast, teacher, 1), len(self.labels)))
        self.update(indices, student.detach(), teacher.detach())
        return loss

    @torch.no_grad()
    def update(self, indices: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> None:
        indices, student, teacher = (_gather_over_ranks(x) for x in (indices, student, teacher))
        for bank, new in ((self.bank_student, student), (self.bank_teacher, teacher)):
            moved = bank[indices] * self.momentum + new * (1 - self.momentum)
            bank.index_copy_(0, indices, F.normalize(moved, dim=-1))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x`, concatenated in rank order (the batches of all ranks have the same size)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
