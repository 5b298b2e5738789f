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
from .base import ClassifyMethod, RunContext, StudentOut, Targets
from .cifd import CIFD
from .crd import CRD
from .ft import FT
from .ifd import IFD
from .ipwd import IPWD
from .kd import DIST, KD, CrossEntropy, NormKD
from .mgd import MGD
from .wsld import WSLD

__all__ = ["REGISTRY", "ClassifyMethod", "RunContext", "StudentOut", "Targets", "build_classify_method", "AT", "CIFD",
           "CRD", "FT", "IFD", "IPWD", "MGD", "WSLD", "DIST", "KD", "CrossEntropy", "NormKD"]

REGISTRY = {"ce": CrossEntropy, "kd": KD, "cifd": CIFD, "dist": DIST, "normkd": NormKD, "crd": CRD, "at": AT,
            "ft": FT, "wsld": WSLD, "ipwd": IPWD, "ifd": IFD, "mgd": MGD}
assert set(REGISTRY) == set(METHODS), "every classification --loss needs a method class"


def build_classify_method(settings: ClassifySettings, *, student_dim: int, teacher_dim: Optional[int],
                          num_rdms: int = 0, student_channels: int = 0, teacher_channels: int = 0,
                          num_classes: int = 0, train_labels=None) -> ClassifyMethod:
    """`train_labels`: the training set's labels, one per sample index (CRD's memory banks)."""
    settings.validate()
    cls = REGISTRY[settings.loss]
    if cls.needs_teacher and teacher_dim is None:
        raise UserError(f"--loss {settings.loss} needs a teacher (--teacher CHECKPOINT)")
    return cls(settings, student_dim=student_dim, teacher_dim=teacher_dim, num_rdms=num_rdms,
               student_channels=student_channels, teacher_channels=teacher_channels, num_classes=num_classes,
               train_labels=train_labels)
