"""What the training loop drives for the classification path: the student classifier and its method.

The frozen teacher, the teacher assistants and the RDM family are held outside the module registry (as in
`cifd_clip.distill.distiller`): they follow `.to()` but DDP never syncs them and checkpoints never store them.
Targets come from the online teacher on the batch's own view (`teacher_image`, or `image` when both share a
recipe), or from the batch's cached fields (`t_image_emb`: pooled features, `t_logits`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..core.distiller_base import DistillerBase
from ..errors import DataError, UserError
from .methods import ClassifyMethod, StudentOut, Targets, build_classify_method
from .settings import ClassifySettings


class FrozenClassifier(nn.Module):
    """A teacher or assistant: eval mode whatever `.train()` says, no gradients."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, with_map: bool = False, with_stages: bool = False):
        if with_stages:
            return self.net.forward_with_stages(x)
        return self.net.forward_with_map(x) if with_map else self.net(x)


class ClassifierDistiller(DistillerBase):
    def __init__(self, student: nn.Module, method: ClassifyMethod, *, teacher=None, assistants=(), rdm=None,
                 seed: int = 0):
        super().__init__(student, method, {"teacher": teacher, "assistants": list(assistants), "rdm": rdm}, seed)

    @classmethod
    def build(cls, student: nn.Module, settings: ClassifySettings, *, teacher: Optional[nn.Module] = None,
              assistants=(), rdm=None, teacher_dim: Optional[int] = None, seed: int = 0,
              train_labels=None) -> "ClassifierDistiller":
        """`train_labels`: the training set's labels by sample index (CRD's memory banks need them)."""
        num_rdms = len(rdm.rdms("image")) if rdm is not None else 0
        channels = {}
        if teacher is not None:
            teacher_dim = teacher.net.feature_dim
            if settings.reads_feature_maps():  # the maps' channels, from one small forward pass
                with torch.no_grad():
                    probe = torch.zeros(1, 3, 32, 32)
                    channels = {"teacher_channels": teacher.net.feature_map(probe).shape[1],
                                "student_channels": student.feature_map(probe).shape[1]}
        method = build_classify_method(settings, student_dim=student.feature_dim, teacher_dim=teacher_dim,
                                       num_rdms=num_rdms, num_classes=student.num_classes,
                                       train_labels=train_labels, **channels)
        if assistants and settings.loss not in ("kd", "crd", "at", "ft"):
            raise UserError(f"--assistants are KD teachers (TAKD/DGKD); --loss {settings.loss} does not use them")
        return cls(student, method, teacher=teacher if method.needs_teacher else None, assistants=assistants,
                   rdm=rdm if method.uses_rdms else None, seed=seed)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._frozen["teacher"]

    # ---------------------------------------------------------------- forward

    @torch.no_grad()
    def targets(self, batch: dict) -> Targets:
        labels = batch["label"]
        out = Targets(labels, indices=batch.get("index"))
        if not self.method.needs_teacher:
            return out
        teacher = self._frozen["teacher"]
        if teacher is not None:
            view = batch.get("teacher_image", batch["image"])
            if self.method.uses_stage_maps:
                out.stage_maps, out.features, out.logits = teacher(view, with_stages=True)
                out.feature_map = out.stage_maps[-1]
            elif self.method.uses_feature_maps:
                out.feature_map, out.features, out.logits = teacher(view, with_map=True)
            else:
                out.features, out.logits = teacher(view)
        elif "t_image_emb" in batch and "t_logits" in batch:
            out.features, out.logits = batch["t_image_emb"].float(), batch["t_logits"].float()
        else:
            raise DataError("this loss needs the teacher's outputs: give --teacher or a --cache made by cls-embed")
        out.assistant_logits = [ta(batch.get("teacher_image", batch["image"]))[1] for ta in self._frozen["assistants"]]
        rdm = self._frozen["rdm"]
        if rdm is not None:
            noise = self._teaching_generator if self.method.s.rdm_teaching == "stochastic" else None
            for module in rdm.rdms("image"):
                recon = module.teach(out.features, noise)
                out.rdm_features.append(recon)
                out.rdm_logits.append(module.head(recon))
        return out

    def forward(self, batch: dict) -> dict:
        stages = []
        if self.method.uses_stage_maps:
            stages, features, logits = self.student.forward_with_stages(batch["image"])
            fmap = stages[-1]
        elif self.method.uses_feature_maps:
            fmap, features, logits = self.student.forward_with_map(batch["image"])
        else:
            (features, logits), fmap = self.student(batch["image"]), None
        with torch.autocast(features.device.type, enabled=False):
            targets = self.targets(batch)
            student = StudentOut(features.float(), logits.float(), fmap, stages)
            return self.method(student, targets, self._kd_generator)
