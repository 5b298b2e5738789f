"""Classification distillation methods, one small module each, built from the whole `ClassifySettings`.

A method reads the student's outputs and the targets and returns `{term: weighted value}`, like the CLIP
methods; trainable parts (the IBM and its decoder, CRD's projections) live in the method, hence inside the
module DDP wraps and the loop checkpoints. KD dropout (DGKD) draws one keep/drop per teacher-like target
per step from the loop's seeded generator. Each --loss is one row of `settings.METHODS`, which names its
module and class here (`method_class`): a new method is one module plus that row.
"""
from __future__ import annotations

import importlib
from typing import Optional

from ...errors import UserError
from ..settings import METHODS, ClassifySettings
from .base import ClassifyMethod, RunContext, StudentOut, Targets

__all__ = ["method_class", "ClassifyMethod", "RunContext", "StudentOut", "Targets", "build_classify_method"]


def method_class(loss: str) -> type:
    """The class a --loss's row of `settings.METHODS` names (MODULE:CLASS, a module of this package)."""
    module, name = METHODS[loss].target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def build_classify_method(settings: ClassifySettings, *, student_dim: int, teacher_dim: Optional[int],
                          num_rdms: int = 0, student_channels: int = 0, teacher_channels: int = 0,
                          num_classes: int = 0, train_labels=None) -> ClassifyMethod:
    """`train_labels`: the training set's labels, one per sample index (CRD's memory banks)."""
    settings.validate()
    row = METHODS[settings.loss]
    if row.needs_teacher and teacher_dim is None:
        raise UserError(f"--loss {settings.loss} needs a teacher (--teacher CHECKPOINT)")
    method = method_class(settings.loss)(
        settings, student_dim=student_dim, teacher_dim=teacher_dim, num_rdms=num_rdms,
        student_channels=student_channels, teacher_channels=teacher_channels, num_classes=num_classes,
        train_labels=train_labels)
    method.needs_teacher, method.uses_rdms = row.needs_teacher, row.uses_rdms
    return method
