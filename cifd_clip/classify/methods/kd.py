"""The methods on logits alone: cross-entropy, Hinton's KD (TAKD, DGKD), DIST and NormKD."""
from __future__ import annotations

from ...core import losses as L
from .base import ClassifyMethod


class CrossEntropy(ClassifyMethod):

    def forward(self, student, targets, generator=None):
        return self.ce(student, targets)


class KD(ClassifyMethod):
    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator)}


class DIST(ClassifyMethod):
    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets), "dist": self.s.kd_weight * L.dist_loss(
            targets.logits.detach(), student.logits, self.s.temperature, self.s.dist_beta, self.s.dist_gamma)}


class NormKD(ClassifyMethod):
    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets),
                "normkd": self.s.kd_weight * L.normalized_kd(targets.logits.detach(), student.logits,
                                                             self.s.temperature)}
