"""MGD (Yang et al., ECCV 2022): masked generative distillation."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .. import losses as CL
from .base import ClassifyMethod


def map_generator(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, 3, padding=1))


def embedding_generator(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width))


class MGD(ClassifyMethod):
    """CE + α·Σ(G(M ⊙ align(S)) − T)² / B. At `--mgd-level map` (the paper's): S and T are the last feature maps,
    `align` a 1x1 conv when the channels differ, M masks whole channels of each sample with probability λ (the
    released classification code; its detection code masks pixels), G is conv3x3-ReLU-conv3x3. At `embedding`:
    the pooled features, a linear `align`, M masks feature dimensions, G is linear-ReLU-linear. The masks come
    from the step's seeded generator. No KD term, as in the paper's classification runs."""

    def __init__(self, settings, *, student_dim: int, teacher_dim: int, student_channels: int = 0,
                 teacher_channels: int = 0, **_):
        super().__init__(settings)
        self.on_maps = settings.mgd_level == "map"
        self.uses_feature_maps = self.on_maps
        if self.on_maps:
            self.align = nn.Conv2d(student_channels, teacher_channels, 1) if student_channels != teacher_channels \
                else nn.Identity()
            self.generator = map_generator(teacher_channels)
        else:
            self.align = nn.Linear(student_dim, teacher_dim) if student_dim != teacher_dim else nn.Identity()
            self.generator = embedding_generator(teacher_dim)

    def forward(self, student, targets, generator=None):
        if self.on_maps:
            source, target = self.align(student.feature_map), targets.feature_map.detach()
            if source.shape[-2:] != target.shape[-2:]:  # MGD asserts equal sizes; here the student's is pooled
                source = F.adaptive_avg_pool2d(source, target.shape[-2:])
        else:
            source, target = self.align(student.features), targets.features.detach()
        keep = CL.channel_keep_mask(len(source), source.shape[1], self.s.mgd_mask_ratio, generator, source.device)
        keep = keep.view(*keep.shape, *([1] * (source.dim() - 2)))
        generated = self.generator(source * keep)
        return {**self.ce(student, targets), "mgd": self.s.mgd_weight * CL.generation_error(generated, target)}
