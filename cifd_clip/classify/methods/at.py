"""Attention transfer (Zagoruyko & Komodakis 2017)."""
from __future__ import annotations

from ...core import losses as L
from .. import losses as CL
from .base import ClassifyMethod


class AT(ClassifyMethod):
    """CE + KD + β·AT. `--at-stages all` (the paper's, RepDistiller's `feats[1:-1]`): the terms of every stage
    summed; `last`: the last map only (the student's pooled to the teacher's size), as this project's AT was."""

    uses_feature_maps = True

    def __init__(self, settings, **_):
        super().__init__(settings)
        self.uses_stage_maps = settings.at_stages == "all"

    def forward(self, student, targets, generator=None):
        if self.uses_stage_maps:
            at = CL.attention_transfer_stages(student.stage_maps, [m.detach() for m in targets.stage_maps])
        else:
            at = L.attention_transfer(student.feature_map, targets.feature_map.detach())
        return {**self.ce(student, targets), **self.kd_terms(student, targets, generator), "at": self.s.at_weight * at}
