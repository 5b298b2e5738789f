"""The module DDP wraps and the loop checkpoints: student CLIP + IBMs/projections + loss terms.

Like mdistiller's distillers, a `Distiller` owns everything trainable in a distillation run and
turns a batch into a dict of named, weighted loss terms. The frozen teacher and the RDM family
are held outside the module registry (see `_frozen`): they follow `.to()` but are not parameters
or buffers, so DDP never syncs them and checkpoints never store them.

Targets come from the batch (`t_image_emb`/`t_text_emb`, from the embedding cache) unless a
teacher is given (online mode: `teacher_image`/`teacher_text`, the teacher's own preprocess and
tokenizer). The IBM reads the student's un-normalised embedding W (the tower's output before the
L2 normalisation the contrastive term uses).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .errors import DataError, UserError
from .ibm import InformationBottleneck

LOSSES = ("contrastive", "cifd", "distill_clip", "clipkd", "tinyclip")
LOGIT_SCALE_MAX = math.log(100)


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, *, loss: str = "cifd", student_dim: int,
                 teacher_dims: Optional[tuple[int, int]] = None, teacher=None, rdm=None,
                 lambda_cl: float = 0.005, teacher_weight: float = 1.0, rdm_weights: Sequence[float] = (),
                 ibm: bool = True, ibm_weight: float = 1e-3, ibm_hidden_dim: Optional[int] = None,
                 kd_dropout: float = 0.0, distortion: str = "mse", contrastive_weight: float = 1.0,
                 distill_weight: float = 1.0, fd_weight: float = 2000.0, icl_weight: float = 1.0,
                 crd_weight: float = 1.0, teacher_logit_scale: float = 100.0, seed: int = 0,
                 local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__()
        if loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if loss != "contrastive" and teacher_dims is None:
            raise UserError(f"--loss {loss} needs teacher targets: an embedding cache or an online teacher")
        self.student = student
        self.loss_name = loss
        self._frozen = {"teacher": teacher, "rdm": rdm}
        self.teacher_logit_scale = float(teacher_logit_scale)
        self.seed = int(seed)
        self._kd_generator = torch.Generator().manual_seed(self.seed)
        gather = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)

        if loss == "contrastive":
            self.losses = nn.ModuleList([L.ContrastiveLoss(contrastive_weight, **gather)])
            return
        t_img, t_txt = teacher_dims
        if loss == "cifd":
            n_rdms = len(rdm.rdms("image")) if rdm is not None else 0
            if rdm is not None and len(rdm.rdms("text")) != n_rdms:
                raise UserError("the RDM checkpoint must hold as many text RDMs as image RDMs")
            weights = list(rdm_weights) if rdm_weights else [1.0] * n_rdms
            if len(weights) != n_rdms:
                raise UserError(f"--rdm-weights gives {len(weights)} weights but the RDM checkpoint holds "
                                f"{n_rdms} RDMs per modality")
            if ibm:
                self.ibm_image = InformationBottleneck(student_dim, t_img, ibm_hidden_dim)
                self.ibm_text = InformationBottleneck(student_dim, t_txt, ibm_hidden_dim)
            else:  # ablation "no IBM": a plain projection to the teacher width, no noise, no rate term
                self.ibm_image = nn.Linear(student_dim, t_img)
                self.ibm_text = nn.Linear(student_dim, t_txt)
            self.use_ibm = ibm
            self.losses = nn.ModuleList([L.CIFDClipLoss(
                lambda_cl, teacher_weight, weights, ibm_weight, ibm_weight, kd_dropout=kd_dropout,
                distortion=distortion, **gather)])
            return
        if loss == "distill_clip":
            self.losses = nn.ModuleList([L.DistillClipLossTerms(contrastive_weight, distill_weight, **gather)])
        elif loss == "tinyclip":
            self.losses = nn.ModuleList([L.ContrastiveLoss(contrastive_weight, **gather),
                                         L.AffinityMimickingLoss(distill_weight, **gather)])
        elif loss == "clipkd":
            self.proj_image = nn.Linear(student_dim, t_img) if student_dim != t_img else None
            self.proj_text = nn.Linear(student_dim, t_txt) if student_dim != t_txt else None
            self.losses = nn.ModuleList([L.ContrastiveLoss(contrastive_weight, **gather),
                                         L.FeatureDistillationLoss(fd_weight),
                                         L.InteractiveContrastiveLoss(icl_weight, **gather),
                                         L.ContrastiveRelationalLoss(crd_weight, **gather)])

    # ---------------------------------------------------------------- frozen parts

    @property
    def teacher(self):
        return self._frozen["teacher"]

    @property
    def rdm(self):
        return self._frozen["rdm"]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for module in self._frozen.values():
            if module is not None:
                module._apply(fn)
        return self

    # ---------------------------------------------------------------- loop hooks

    def begin_step(self, step: int) -> None:
        """KD dropout draws from (seed, step): the same on every rank and again after a resume."""
        self._kd_generator.manual_seed(self.seed * 1_000_003 + step)

    @torch.no_grad()
    def post_step(self) -> None:
        self.student.logit_scale.clamp_(0, LOGIT_SCALE_MAX)  # as open_clip_train

    def student_state_dict(self) -> dict:
        return self.student.state_dict()

    def distill_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}

    def load_states(self, state_dict: dict, distill_state_dict: dict) -> None:
        full = {**{f"student.{k}": v for k, v in state_dict.items()}, **distill_state_dict}
        result = self.load_state_dict(full, strict=False)
        if result.missing_keys or result.unexpected_keys:
            key = (result.missing_keys or result.unexpected_keys)[0]
            raise UserError(f"the checkpoint does not fit this run's student/loss set-up (e.g. {key!r} "
                            f"{'missing' if result.missing_keys else 'unexpected'}); check --model and --loss")

    # ---------------------------------------------------------------- forward

    @torch.no_grad()
    def targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher embeddings [B, D] per modality: from the online teacher or the cached batch fields."""
        if self.teacher is not None:
            if "teacher_image" not in batch:
                raise DataError("online teacher mode needs batches with teacher_image/teacher_text")
            return (self.teacher.encode_image(batch["teacher_image"]).float(),
                    self.teacher.encode_text(batch["teacher_text"]).float())
        if "t_image_emb" not in batch or "t_text_emb" not in batch:
            raise DataError("the batches carry no cached teacher embeddings (t_image_emb/t_text_emb): "
                            "give --cache DIR or --teacher SPEC --teacher-online")
        return batch["t_image_emb"].float(), batch["t_text_emb"].float()

    def teacher_scale(self, device) -> torch.Tensor:
        if self.teacher is not None:
            return self.teacher.model.logit_scale.detach().exp().float()
        return torch.tensor(self.teacher_logit_scale, device=device)

    def forward(self, batch: dict) -> dict:
        student = self.student
        w_img = student.encode_image(batch["image"])
        w_txt = student.encode_text(batch["text"])
        f_img, f_txt = F.normalize(w_img, dim=-1), F.normalize(w_txt, dim=-1)
        scale = student.logit_scale.exp()
        if self.loss_name == "contrastive":
            return self.losses[0](f_img, f_txt, scale)

        with torch.autocast(w_img.device.type, enabled=False):
            t_img, t_txt = self.targets(batch)
            if self.loss_name == "cifd":
                rdm = self.rdm
                r_img = rdm.teach("image", t_img) if rdm is not None else []
                r_txt = rdm.teach("text", t_txt) if rdm is not None else []
                if self.use_ibm:
                    out_img, out_txt = self.ibm_image(w_img.float()), self.ibm_text(w_txt.float())
                else:
                    out_img, out_txt = {"output": self.ibm_image(w_img.float())}, {"output": self.ibm_text(w_txt.float())}
                return self.losses[0](f_img.float(), f_txt.float(), scale.float(), out_img, out_txt, t_img, t_txt,
                                      r_img, r_txt, generator=self._kd_generator)

        t_scale = self.teacher_scale(w_img.device)
        terms: dict = {}
        for loss in self.losses:
            if isinstance(loss, L.ContrastiveLoss):
                terms.update(loss(f_img, f_txt, scale))
            elif isinstance(loss, L.FeatureDistillationLoss):
                terms.update(loss(w_img, w_txt, t_img, t_txt, self.proj_image, self.proj_text))
            elif isinstance(loss, L.InteractiveContrastiveLoss):
                terms.update(loss(w_img, w_txt, scale, t_img, t_txt, self.proj_image, self.proj_text))
            else:  # DistillClipLossTerms, ContrastiveRelationalLoss, AffinityMimickingLoss
                terms.update(loss(f_img, f_txt, scale, t_img, t_txt, t_scale))
        return terms
