"""WSLD (Zhou et al., ICLR 2021): weighted soft labels."""
from __future__ import annotations

from .. import losses as CL
from .base import ClassifyMethod


class WSLD(ClassifyMethod):
    """CE + α·τ²·mean_i[(1 − exp(−CE_S,i/CE_T,i))·KL_i]: a sample the student already fits as well as the teacher
    (CE_S ≪ CE_T) gets little of the teacher's soft label, one it fits worse gets nearly all of it."""

    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets),
                "wsld": self.s.kd_weight * CL.weighted_soft_label_kd(targets.logits.detach(), student.logits,
                                                                     targets.labels, self.s.temperature)}
