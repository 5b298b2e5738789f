"""IFD (Chen et al., NeurIPS 2022): feature distillation through an ensemble of projectors."""
from __future__ import annotations

from torch import nn

from .. import losses as CL
from .base import ClassifyMethod


class IFD(ClassifyMethod):
    """CE + β·mean(1 − cos(mean_k relu(P_k f_S), f_T)) on the pooled features; each projector P_k is a linear map
    to the teacher's width, randomly initialised (PEFD's: linear + ReLU, three of them, β 25, no KD)."""

    def __init__(self, settings, *, student_dim: int, teacher_dim: int, **_):
        super().__init__(settings)
        self.projectors = nn.ModuleList(nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.ReLU())
                                        for _ in range(settings.ifd_projectors))

    def forward(self, student, targets, generator=None):
        projections = [projector(student.features) for projector in self.projectors]
        return {**self.ce(student, targets),
                "ifd": self.s.ifd_weight * CL.ensemble_direction_loss(projections, targets.features.detach())}
