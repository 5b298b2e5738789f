"""The module DDP wraps and the loop checkpoints: the student CLIP and the distillation method.

Like mdistiller's distillers, a `Distiller` owns everything trainable in a run (the student and its
method's IBMs/projections) and turns a batch into a dict of named, weighted loss terms. The frozen teacher
and the RDM family are held outside the module registry (see `_frozen`): they follow `.to()` but are not
parameters or buffers, so DDP never syncs them and checkpoints never store them.

Targets come from the batch (`t_image_emb`/`t_text_emb`, from the embedding cache) unless a teacher is
given (online mode: `teacher_image`/`teacher_text`, the teacher's own preprocess and tokenizer, or the student's
`image`/`text` when those would be the same tensors).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import DataError, UserError
from .methods import Method, StudentOutputs, Targets, build_method
from .settings import LossSettings
from ..core.distiller_base import DistillerBase

LOGIT_SCALE_MAX = math.log(100)
# a cached teacher's logit scale when its cache does not record one (caches of older versions): CLIP's 100
DEFAULT_TEACHER_LOGIT_SCALE = 100.0
# Checkpoints written before the methods became modules of their own kept these at the top level.
_OLD_PREFIXES = {"ibm_image.decoder.": "method.decoders.0.", "ibm_text.decoder.": "method.decoders.1.",
                 "ibm_image.": "method.ibm_image.", "ibm_text.": "method.ibm_text.",
                 "proj_image.": "method.proj_image.", "proj_text.": "method.proj_text.", "losses.": "method."}


class Distiller(DistillerBase):
    def __init__(self, student: nn.Module, method: Method, *, teacher=None, rdm=None,
                 teacher_logit_scale: Optional[float] = None, seed: int = 0):
        super().__init__(student, method, {"teacher": teacher, "rdm": rdm}, seed)
        self.teacher_logit_scale = teacher_logit_scale

    @classmethod
    def build(cls, student: nn.Module, settings: LossSettings, *, student_dim: int,
              teacher_dims: Optional[tuple[int, int]] = None, teacher=None, rdm=None,
              teacher_logit_scale: Optional[float] = None, seed: int = 0, **gather) -> "Distiller":
        num_rdms = 0
        if rdm is not None:
            num_rdms = len(rdm.rdms("image"))
            if len(rdm.rdms("text")) != num_rdms:
                raise UserError("the RDM checkpoint must hold as many text RDMs as image RDMs")
        method = build_method(settings, student_dim=student_dim, teacher_dims=teacher_dims, num_rdms=num_rdms,
                              **gather)
        return cls(student, method, teacher=teacher, rdm=rdm if method.uses_rdms else None,
                   teacher_logit_scale=teacher_logit_scale, seed=seed)

    # ---------------------------------------------------------------- frozen parts

    @property
    def teacher(self):
        return self._frozen["teacher"]

    @property
    def rdm(self):
        return self._frozen["rdm"]

    @torch.no_grad()
    def post_step(self) -> None:
        self.student.logit_scale.clamp_(0, LOGIT_SCALE_MAX)  # as open_clip_train

    def migrate(self, distill_state_dict: dict) -> dict:
        return _migrate(distill_state_dict)

    # ---------------------------------------------------------------- forward

    @torch.no_grad()
    def targets(self, batch: dict, device) -> Targets:
        """The teacher's embeddings (online teacher or cached batch fields), its logit scale and, for methods
        that use them, every RDM's rounded reconstruction."""
        if self.teacher is not None:
            # the batch has no teacher fields when the teacher's inputs are the student's (`clip_models.same_inputs`)
            image = self.teacher.encode_image(batch.get("teacher_image", batch["image"])).float()
            text = self.teacher.encode_text(batch.get("teacher_text", batch["text"])).float()
            scale = self.teacher.model.logit_scale.detach().exp().float()
        else:
            if "t_image_emb" not in batch or "t_text_emb" not in batch:
                raise DataError("the batches carry no cached teacher embeddings (t_image_emb/t_text_emb): "
                                "give --cache DIR or --teacher SPEC --teacher-online")
            image, text = batch["t_image_emb"].float(), batch["t_text_emb"].float()
            scale = torch.tensor(float(self.teacher_logit_scale or DEFAULT_TEACHER_LOGIT_SCALE), device=device)
        if self.teacher_logit_scale is not None:
            scale = torch.tensor(float(self.teacher_logit_scale), device=device)
        noise = self._teaching_generator if getattr(self.method, "teaching", "mean") == "stochastic" else None
        rdm_image = self.rdm.teach("image", image, noise) if self.rdm is not None else []
        rdm_text = self.rdm.teach("text", text, noise) if self.rdm is not None else []
        return Targets(image, text, scale, rdm_image, rdm_text)

    def encode(self, batch: dict) -> StudentOutputs:
        """The student's features, in fp32 for the loss terms; with low-precision weights (--precision bf16 and the
        like) the images go in as the student's own dtype, as open_clip_train feeds them."""
        image = batch["image"]
        weight = next((m.weight for m in self.student.visual.modules() if isinstance(m, torch.nn.Conv2d)), None)
        if weight is not None and image.is_floating_point() and weight.dtype != image.dtype:
            image = image.to(weight.dtype)
        return StudentOutputs(self.student.encode_image(image).float(), self.student.encode_text(batch["text"]).float(),
                              self.student.logit_scale.exp().float())

    def forward(self, batch: dict) -> dict:
        student = self.encode(batch)
        if not self.method.needs_teacher:
            return self.method(student, None, self._kd_generator)
        with torch.autocast(student.image.device.type, enabled=False):
            targets = self.targets(batch, student.image.device)
            return self.method(student.float(), targets, self._kd_generator)


def _migrate(distill_state_dict: dict) -> dict:
    out = {}
    for key, value in distill_state_dict.items():
        for old, new in _OLD_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
