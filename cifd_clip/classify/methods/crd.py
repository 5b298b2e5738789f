"""CRD (Tian et al. 2020): contrastive representation distillation between projected features."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...distill import losses as L
from .base import ClassifyMethod


class CRD(ClassifyMethod):
    """Projections of both features (trainable, in the method) and an in-batch contrastive term, plus KD."""

    def __init__(self, settings, *, student_dim: int, teacher_dim: int, **_):
        super().__init__(settings)
        self.embed_student = nn.Linear(student_dim, settings.crd_dim)
        self.embed_teacher = nn.Linear(teacher_dim, settings.crd_dim)

    def forward(self, student, targets, generator=None):
        s = F.normalize(self.embed_student(student.features), dim=-1)
        t = F.normalize(self.embed_teacher(targets.features.detach()), dim=-1)
        crd = L.in_batch_contrastive(s, t, self.s.crd_temperature)
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator),
                "crd": self.s.crd_weight * crd}
