"""CIFD: the paper's classification loss, with the IBM on the student's pooled features."""
from __future__ import annotations

import torch
from torch import nn

from ...core import losses as L
from ...core.ibm import InformationBottleneck, make_decoder
from ...core.rdm_teaching import curriculum_scale
from ...errors import UserError
from .base import ClassifyMethod


class CIFD(ClassifyMethod):
    """The paper's classification loss, with the IBM on the student's pooled features (its decoder maps them
    to the teacher's width). Terms: ce, kd_teacher, kd_rdm{n}, emb_teacher, emb_rdm{n}, rate."""


    def __init__(self, settings, *, student_dim: int, teacher_dim: int, num_rdms: int, **_):
        super().__init__(settings)
        s = settings
        weights = list(s.rdm_weights) if s.rdm_weights else [1.0] * num_rdms
        if len(weights) != num_rdms:
            raise UserError(f"--rdm-weights gives {len(weights)} weights but the RDM checkpoint holds {num_rdms} RDMs")
        self.ibm = InformationBottleneck(student_dim, input_kind=s.ibm_input, noise=s.ibm, rate=s.ibm)
        self.decoder = make_decoder(student_dim, teacher_dim, s.ibm_hidden_dim)
        self.teaching = s.rdm_teaching
        if self.teaching == "heads":  # the teacher's term keeps `decoder`; each RDM gets a head of the same kind
            self.rdm_heads = nn.ModuleList(make_decoder(student_dim, teacher_dim, s.ibm_hidden_dim)
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
