"""What every classification method shares: the student's outputs, the targets, and the base class."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...core import losses as L
from ..settings import ClassifySettings


@dataclass
class StudentOut:
    features: torch.Tensor  # pooled features [B, D_s]
    logits: torch.Tensor  # [B, C]
    feature_map: Optional[torch.Tensor] = None  # last map [B, C', H, W] (methods on feature maps only)
    stage_maps: list = field(default_factory=list)  # every stage's map, last one last (attention transfer)


@dataclass
class Targets:
    labels: torch.Tensor  # [B]
    features: Optional[torch.Tensor] = None  # the teacher's pooled features [B, D_t]
    logits: Optional[torch.Tensor] = None  # the teacher's logits [B, C]
    feature_map: Optional[torch.Tensor] = None
    assistant_logits: list = field(default_factory=list)  # each teacher assistant's logits (DGKD)
    rdm_features: list = field(default_factory=list)  # each RDM's rounded reconstruction, in rate order
    rdm_logits: list = field(default_factory=list)
    stage_maps: list = field(default_factory=list)  # the teacher's stage maps (attention transfer)
    indices: Optional[torch.Tensor] = None  # each sample's index in the training set [B] (CRD's memory)


@dataclass
class RunContext:
    """What `before_training` may use: the distiller (student, method, frozen teacher), the training stream, the
    stage's options, the process group and the run's folder."""
    distiller: nn.Module
    data: object
    cfg: object
    env: object
    run_dir: Path


class ClassifyMethod(nn.Module):
    # the method's row of settings.METHODS, set by build_classify_method
    needs_teacher = True
    uses_rdms = False
    uses_feature_maps = False
    uses_stage_maps = False
    find_unused_parameters = False
    progress = 0.0  # step / total steps, set by the distiller each step

    def __init__(self, settings: ClassifySettings, **_):
        super().__init__()
        self.s = settings

    def before_training(self, run: "RunContext") -> None:
        """Work a method does before the student's first step (IPWD's propensities, FT's paraphraser); none by
        default. It runs again when a run resumes, before the checkpoint's states are loaded."""

    def ce(self, student: StudentOut, targets: Targets) -> dict:
        return {"ce": self.s.ce_weight * F.cross_entropy(student.logits, targets.labels)}

    def kd_terms(self, student: StudentOut, targets: Targets, generator) -> dict:
        """KD from the teacher and each assistant, with DGKD's dropout over them."""
        sources = [("kd_teacher", targets.logits)] + [(f"kd_ta{i + 1}", t) for i, t in enumerate(targets.assistant_logits)]
        keep = L.kd_keep_mask(len(sources), self.s.kd_dropout, generator)
        return {name: (self.s.kd_weight * L.kl_divergence(t.detach(), student.logits, self.s.temperature)
                       if kept else student.logits.new_zeros(())) for (name, t), kept in zip(sources, keep)}
