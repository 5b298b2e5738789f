"""IPWD (Niu et al., NeurIPS 2022): inverse probability weighting distillation."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from .. import losses as CL
from .base import ClassifyMethod, RunContext

log = logging.getLogger(__name__)


class IPWD(ClassifyMethod):
    """CE + α·τ²·mean_i[w(y_i)·KL_i], w(c) = P_human(c) / P_machine(c): the labels' share of class c over the
    share of the teacher's softened probability mass that falls on c, normalised to a mean of 1 over the samples.
    A class the teacher under-predicts (under-represented in the machine domain) gets more of its soft labels.
    The masses are counted in `before_training`, one pass of the teacher over the training stream (epoch 0's
    views, or the cached logits), and kept in the checkpoint."""

    def __init__(self, settings, *, num_classes: int, **_):
        super().__init__(settings)
        self.register_buffer("class_weights", torch.ones(num_classes))

    @torch.no_grad()
    def before_training(self, run: RunContext) -> None:
        mass, counts = teacher_class_mass(run, len(self.class_weights), self.s.temperature)
        self.class_weights.copy_(CL.inverse_propensity_weights(mass, counts).to(self.class_weights))
        if run.env.is_main:
            w = self.class_weights[counts.to(self.class_weights.device) > 0]  # of the classes with samples
            log.info("IPWD: class weights from %d samples: min %.3f, max %.3f", int(counts.sum()), w.min(), w.max())

    def forward(self, student, targets, generator=None):
        return {**self.ce(student, targets),
                "ipwd": self.s.kd_weight * CL.inverse_propensity_kd(targets.logits.detach(), student.logits,
                                                                    targets.labels, self.class_weights,
                                                                    self.s.temperature)}


@torch.no_grad()
def teacher_class_mass(run: RunContext, num_classes: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i softmax(v_T(x_i)/τ) and the label counts over one epoch of the stream, summed over every rank."""
    from ...engine.loop import to_device

    device = run.env.device
    distiller = run.distiller.to(device)
    mass = torch.zeros(num_classes, dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for batch in run.data.iterate(0):
        targets = distiller.targets(to_device(batch, device))
        mass += (targets.logits.float() / temperature).softmax(-1).sum(0).double()
        counts += torch.bincount(targets.labels, minlength=num_classes).double()
    if run.env.distributed and dist.is_initialized():
        for total in (mass, counts):
            dist.all_reduce(total)
    return mass.float(), counts.float()
