"""Classification distillation methods, one small module each, built from the whole `ClassifySettings`.

A method reads the student's outputs and the targets and returns `{term: weighted value}`, like the CLIP
methods; trainable parts (the IBM and its decoder, CRD's projections) live in the method, hence inside the
module DDP wraps and the loop checkpoints. KD dropout (DGKD) draws one keep/drop per teacher-like target
per step from the loop's seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..distill import losses as L
from ..distill.ibm import InformationBottleneck, make_decoder
from ..distill.rdm_teaching import curriculum_scale
from ..errors import UserError
from .settings import METHODS, ClassifySettings


@dataclass
class StudentOut:
    features: torch.Tensor  # pooled features [B, D_s]
    logits: torch.Tensor  # [B, C]
    feature_map: Optional[torch.Tensor] = None  # last map [B, C', H, W] (attention transfer only)


@dataclass
class Targets:
    labels: torch.Tensor  # [B]
    features: Optional[torch.Tensor] = None  # the teacher's pooled features [B, D_t]
    logits: Optional[torch.Tensor] = None  # the teacher's logits [B, C]
    feature_map: Optional[torch.Tensor] = None
    assistant_logits: list = field(default_factory=list)  # each teacher assistant's logits (DGKD)
    rdm_features: list = field(default_factory=list)  # each RDM's rounded reconstruction, in rate order
    rdm_logits: list = field(default_factory=list)


class ClassifyMethod(nn.Module):
    needs_teacher = True
    uses_rdms = False
    uses_feature_maps = False
    find_unused_parameters = False
    progress = 0.0  # step / total steps, set by the distiller each step

    def __init__(self, settings: ClassifySettings, **_):
        super().__init__()
        self.s = settings

    def ce(self, student: StudentOut, targets: Targets) -> dict:
        return {"ce": self.s.ce_weight * F.cross_entropy(student.logits, targets.labels)}

    def kd_terms(self, student: StudentOut, targets: Targets, generator) -> dict:
        """KD from the teacher and each assistant, with DGKD's dropout over them."""
        sources = [("kd_teacher", targets.logits)] + [(f"kd_ta{i + 1}", t) for i, t in enumerate(targets.assistant_logits)]
        keep = L.kd_keep_mask(len(sources), self.s.kd_dropout, generator)
        return {name: (self.s.kd_weight * L.kl_divergence(t.detach(), student.logits, self.s.temperature)
                       if kept else student.logits.new_zeros(())) for (name, t), kept in zip(sources, keep)}


class CrossEntropy(ClassifyMethod):
    needs_teacher = False

    def forward(self, student, targets, generator=None):
        return self.ce(student, targets)


class KD(ClassifyMethod):
    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator)}


class CIFD(ClassifyMethod):
    """The paper's classification loss, with the IBM on the student's pooled features (its decoder maps them
    to the teacher's width). Terms: ce, kd_teacher, kd_rdm{n}, emb_teacher, emb_rdm{n}, rate."""

    uses_rdms = True

    def __init__(self, settings, *, student_dim: int, teacher_dim: int, num_rdms: int, **_):
        super().__init__(settings)
        s = settings
        weights = list(s.rdm_weights) if s.rdm_weights else [1.0] * num_rdms
        if len(weights) != num_rdms:
            raise UserError(f"--rdm-weights gives {len(weights)} weights but the RDM checkpoint holds {num_rdms} RDMs")
        self.ibm = InformationBottleneck(student_dim, input_kind=s.ibm_input, noise=s.ibm, rate=s.ibm)
        self.decoder = make_decoder(student_dim, teacher_dim, s.ibm_hidden_dim or None)
        self.teaching = s.rdm_teaching
        if self.teaching == "heads":  # the teacher's term keeps `decoder`; each RDM gets a head of the same kind
            self.rdm_heads = nn.ModuleList(make_decoder(student_dim, teacher_dim, s.ibm_hidden_dim or None)
                                           for _ in range(num_rdms))
        self.num_rdms = num_rdms
        self.loss = L.CIFDClassificationLoss(weights, ce_weight=s.ce_weight, kl_weight=s.kd_weight,
                                             embedding_weight=s.embedding_weight,
                                             rate_weight=s.ibm_weight if s.ibm else 0.0, temperature=s.temperature,
                                             kd_dropout=s.kd_dropout, distortion=s.distortion)
        self.find_unused_parameters = s.kd_dropout > 0

    def project(self, features: torch.Tensor) -> dict:
        z = self.ibm(features)
        output = self.decoder(z["noisy"])
        if self.teaching == "heads":
            output = torch.stack([output, *(head(z["noisy"]) for head in self.rdm_heads)])
        return {"output": output, "rate": z.get("rate")}

    def forward(self, student, targets, generator=None):
        scale = curriculum_scale(self.num_rdms, self.progress) if self.teaching == "curriculum" else None
        return self.loss(student.logits, targets.labels, self.project(student.features), targets.logits,
                         targets.features, targets.rdm_logits, targets.rdm_features, generator=generator, scale=scale)


class DIST(ClassifyMethod):
    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets), "dist": self.s.kd_weight * L.dist_loss(
            targets.logits.detach(), student.logits, self.s.temperature, self.s.dist_beta, self.s.dist_gamma)}


class NormKD(ClassifyMethod):
    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets),
                "normkd": self.s.kd_weight * L.normalized_kd(targets.logits.detach(), student.logits,
                                                             self.s.temperature)}


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


class AT(ClassifyMethod):
    uses_feature_maps = True

    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator),
                "at": self.s.at_weight * L.attention_transfer(student.feature_map, targets.feature_map.detach())}


class FT(ClassifyMethod):
    """Paraphraser (teacher side: encoder to factors + decoder back, trained on reconstruction here) and
    translator (student side); the student matches the teacher's normalised factors in L1."""

    uses_feature_maps = True

    def __init__(self, settings, *, student_channels: int, teacher_channels: int, **_):
        super().__init__(settings)
        factors = max(1, round(teacher_channels * settings.ft_rate))
        self.paraphraser = nn.Sequential(nn.Conv2d(teacher_channels, factors, 3, padding=1), nn.LeakyReLU(0.1))
        self.reconstruct = nn.Conv2d(factors, teacher_channels, 3, padding=1)
        self.translator = nn.Sequential(nn.Conv2d(student_channels, factors, 3, padding=1), nn.LeakyReLU(0.1))

    def forward(self, student, targets, generator=None):
        teacher_map = targets.feature_map.detach()
        factor_t = self.paraphraser(teacher_map)
        factor_s = self.translator(student.feature_map)
        if factor_s.shape[-2:] != factor_t.shape[-2:]:
            factor_s = F.adaptive_avg_pool2d(factor_s, factor_t.shape[-2:])
        ft = L.factor_transfer(factor_s, factor_t.detach())
        rebuild = F.mse_loss(self.reconstruct(factor_t), teacher_map)
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator),
                "ft": self.s.ft_weight * ft, "ft_paraphraser": rebuild}


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
