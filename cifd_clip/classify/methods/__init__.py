"""Classification distillation methods, one small module each, built from the whole `ClassifySettings`.

A method reads the student's outputs and the targets and returns `{term: weighted value}`, like the CLIP
methods; trainable parts (the IBM and its decoder, CRD's projections) live in the method, hence inside the
module DDP wraps and the loop checkpoints. KD dropout (DGKD) draws one keep/drop per teacher-like target
per step from the loop's seeded generator.
"""
from __future__ import annotations

from typing import Optional

from ...errors import UserError
from ..settings import METHODS, ClassifySettings
from .at import AT
from .base import ClassifyMethod, StudentOut, Targets
from .cifd import CIFD
from .crd import CRD
from .ft import FT
from .kd import DIST, KD, CrossEntropy, NormKD

__all__ = ["REGISTRY", "ClassifyMethod", "StudentOut", "Targets", "build_classify_method", "AT", "CIFD", "CRD",
           "FT", "DIST", "KD", "CrossEntropy", "NormKD"]

REGISTRY = {"ce": CrossEntropy, "kd": KD, "cifd": CIFD, "dist": DIST, "normkd": NormKD, "crd": CRD, "at": AT,
            "ft": FT}
assert set(REGISTRY) == set(METHODS), "every classification --loss needs a method class"


def build_classify_method(settings: ClassifySettings, *, student_dim: int, teacher_dim: Optional[int],
                          num_rdms: int = 0, student_channels: int = 0, teacher_channels: int = 0) -> ClassifyMethod:
    settings.validate()
    cls = REGISTRY[settings.loss]
    if cls.needs_teacher and teacher_dim is None:
        raise UserError(f"--loss {settings.loss} needs a teacher (--teacher CHECKPOINT)")
    return cls(settings, student_dim=student_dim, teacher_dim=teacher_dim, num_rdms=num_rdms,
               student_channels=student_channels, teacher_channels=teacher_channels)
