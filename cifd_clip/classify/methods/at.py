"""Attention transfer (Zagoruyko & Komodakis 2017)."""
from __future__ import annotations

from ...distill import losses as L
from .base import ClassifyMethod


class AT(ClassifyMethod):
    uses_feature_maps = True

    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator),
                "at": self.s.at_weight * L.attention_transfer(student.feature_map, targets.feature_map.detach())}
