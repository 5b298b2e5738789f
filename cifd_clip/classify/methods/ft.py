"""Factor transfer (Kim et al. 2018)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...distill import losses as L
from .base import ClassifyMethod


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
