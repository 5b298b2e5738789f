"""The CLIP distillation methods, one small module each, built from the whole `LossSettings` object.

A method reads the student's outputs (and, except for `contrastive`, the teacher's targets) and returns a
dict of named, already weighted loss terms. Trainable parts a method needs (the IBMs' densities and
decoders, CLIP-KD's projections) live in the method module, hence inside the `Distiller` that DDP wraps
and the loop checkpoints. Each `--loss` is one row of `settings.METHODS`, which names its class here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..core import losses as L
from ..core.ibm import InformationBottleneck, IsometricDecoder, SharedDecoder, make_decoder, run_bottlenecks
from ..core.rdm_teaching import curriculum_scale
from .settings import METHODS, LossSettings


@dataclass
class StudentOutputs:
    image: torch.Tensor  # W, the tower's embedding [B, d]
    text: torch.Tensor
    logit_scale: torch.Tensor  # exp of the student's learned logit scale

    @property
    def image_normed(self) -> torch.Tensor:
        return F.normalize(self.image, dim=-1)

    @property
    def text_normed(self) -> torch.Tensor:
        return F.normalize(self.text, dim=-1)

    def float(self) -> "StudentOutputs":
        return StudentOutputs(self.image.float(), self.text.float(), self.logit_scale.float())


@dataclass
class Targets:
    image: torch.Tensor  # the teacher's embeddings [B, D]
    text: torch.Tensor
    logit_scale: torch.Tensor  # the teacher's (exp'd) logit scale
    rdm_image: list = field(default_factory=list)  # each RDM's rounded reconstruction [B, D], in rate order
    rdm_text: list = field(default_factory=list)


class Method(nn.Module):
    """`needs_teacher` and `uses_rdms` are the method's row of `settings.METHODS` (set by `build_method`)."""
    needs_teacher = True
    uses_rdms = False
    find_unused_parameters = False  # DDP: set when some parameters may get no gradient in a step
    progress = 0.0  # step / total steps, set by the distiller each step

    def forward(self, student: StudentOutputs, targets: Optional[Targets],
                generator: Optional[torch.Generator] = None) -> dict:
        raise NotImplementedError


class Contrastive(Method):
    def __init__(self, settings: LossSettings, *, gather: dict, **_):
        super().__init__()
        self.contrastive = L.ContrastiveLoss(settings.resolved_contrastive_weight(), **gather)

    def forward(self, student, targets=None, generator=None) -> dict:
        return self.contrastive(student.image_normed, student.text_normed, student.logit_scale)


class CIFD(Method):
    """λ_CL·contrastive + Σ_modality [ w_T·D(Û, X) + Σ_n λ_n·D(Û, X_n) + λ_I·rate(Ŵ) ]  (the paper).

    Û = dec(Ŵ), Ŵ the IBM's noisy copy of the student embedding. With `ibm_decoder="shared"` one decoder maps
    both modalities (so that Û-space alignment between image and text carries over to the student's own
    space W, which is what is exported); "separate" gives each modality its own.
    """

    def __init__(self, settings: LossSettings, *, student_dim: int, teacher_dims: tuple[int, int], num_rdms: int,
                 gather: dict, **_):
        super().__init__()
        s = settings
        weights = list(s.rdm_weights) if s.rdm_weights else [1.0] * num_rdms
        if len(weights) != num_rdms:
            raise UserError(f"--rdm-weights gives {len(weights)} weights but the RDM checkpoint holds {num_rdms} RDMs "
                            f"per modality")
        t_img, t_txt = teacher_dims
        if s.ibm_decoder != "separate" and t_img != t_txt:
            raise UserError(f"a shared IBM decoder needs image and text targets of one width, not {t_img} and "
                            f"{t_txt}: pass --ibm-decoder separate")
        self.kd_dropout = s.kd_dropout
        self.find_unused_parameters = s.kd_dropout > 0
        self.contrastive = L.ContrastiveLoss(s.resolved_contrastive_weight(), **gather)
        ibm = dict(input_kind=s.ibm_input, noise=s.ibm, rate=s.ibm)
        self.ibm_image = InformationBottleneck(student_dim, **ibm)
        self.ibm_text = InformationBottleneck(student_dim, **ibm)
        self.shared_decoder = s.ibm_decoder in ("shared", "isometric")

        def decoders() -> nn.ModuleList:
            if s.ibm_decoder == "isometric":
                return nn.ModuleList([IsometricDecoder(student_dim, t_img, s.ibm_orthogonal_map)])
            if self.shared_decoder:
                return nn.ModuleList([SharedDecoder(student_dim, t_img, s.ibm_hidden_dim)])
            return nn.ModuleList([make_decoder(student_dim, t_img, s.ibm_hidden_dim),
                                  make_decoder(student_dim, t_txt, s.ibm_hidden_dim)])

        self.decoders = decoders()  # the teacher's term (and export's map into the teacher's space)
        self.teaching, self.num_rdms = s.rdm_teaching, num_rdms
        if self.teaching == "heads":  # one more decoder of the same kind per RDM
            self.rdm_heads = nn.ModuleList(decoders() for _ in range(num_rdms))
        common = dict(distortion=s.distortion, normalize_targets=s.normalize_targets)
        rate_weight = s.ibm_weight if s.ibm else 0.0
        self.image = L.CIFDFeatureLoss(s.teacher_weight, weights, rate_weight, prefix="image_", **common)
        self.text = L.CIFDFeatureLoss(s.teacher_weight, weights, rate_weight, prefix="text_", **common)

    def decode(self, modality: str, w_hat: torch.Tensor, decoders: Optional[nn.ModuleList] = None) -> torch.Tensor:
        index = 0 if modality == "image" else 1
        decoders = self.decoders if decoders is None else decoders
        if self.shared_decoder:
            return decoders[0](w_hat, index)
        return decoders[index](w_hat)

    def predict(self, modality: str, w_hat: torch.Tensor) -> torch.Tensor:
        """Û [B,D], or with `--rdm-teaching heads` one Û per target [1 + N, B, D] (the teacher's first)."""
        u_hat = self.decode(modality, w_hat)
        if self.teaching != "heads":
            return u_hat
        return torch.stack([u_hat, *(self.decode(modality, w_hat, heads) for heads in self.rdm_heads)])

    def bottleneck(self, modality: str) -> dict:
        return {"image": self.ibm_image, "text": self.ibm_text}[modality]

    def project(self, modality: str, w: torch.Tensor) -> torch.Tensor:
        """Û without noise: where the feature terms compare the student with its targets."""
        ibm = self.bottleneck(modality)
        was_training = ibm.training
        ibm.eval()
        try:
            return self.decode(modality, ibm(w)["noisy"])
        finally:
            ibm.train(was_training)

    def keep_mask(self, num_targets: int, generator) -> list[bool]:
        """One KD-dropout draw shared by both modalities: a dropped teacher/RDM is dropped whole."""
        return L.kd_keep_mask(num_targets, self.kd_dropout, generator)

    def feature_terms(self, student: StudentOutputs, targets: Targets, keep: Sequence[bool]) -> dict:
        out = {}
        bottlenecked = run_bottlenecks([self.ibm_image, self.ibm_text], [student.image, student.text])
        scale = curriculum_scale(self.num_rdms, self.progress) if self.teaching == "curriculum" else None
        for modality, z, teacher, rdm_targets, loss in (
                ("image", bottlenecked[0], targets.image, targets.rdm_image, self.image),
                ("text", bottlenecked[1], targets.text, targets.rdm_text, self.text)):
            u_hat = self.predict(modality, z["noisy"])
            out.update(loss(u_hat, z.get("rate"), teacher, rdm_targets, keep, scale))
        return out

    def forward(self, student, targets, generator=None) -> dict:
        keep = self.keep_mask(1 + len(targets.rdm_image), generator)
        out = self.contrastive(student.image_normed, student.text_normed, student.logit_scale)
        out.update(self.feature_terms(student, targets, keep))
        return out


class CIFDAffinity(CIFD):
    """CIFD plus, as weak teachers of the student's batch affinities, the teacher's own image-text logits and
    each RDM's (image RDM_n's reconstruction against text RDM_n's): w_A·[A(X) + Σ_n λ_n·A(X_n)], A the soft
    cross-entropy of open_clip's distill term (TinyCLIP's affinity mimicking), KD dropout shared."""

    def __init__(self, settings: LossSettings, *, gather: dict, **kwargs):
        super().__init__(settings, gather=gather, **kwargs)
        self.affinity = L.AffinityMimickingLoss(1.0, **gather)
        self.affinity_weight = float(settings.distill_weight)

    def forward(self, student, targets, generator=None) -> dict:
        keep = self.keep_mask(1 + len(targets.rdm_image), generator)
        out = self.contrastive(student.image_normed, student.text_normed, student.logit_scale)
        out.update(self.feature_terms(student, targets, keep))
        pairs = [("affinity_teacher", targets.image, targets.text, 1.0)]
        pairs += [(f"affinity_rdm{n + 1}", img, txt, self.image.weights[name])
                  for n, (img, txt, name) in enumerate(zip(targets.rdm_image, targets.rdm_text, self.image.rdm_names))]
        for (name, img, txt, weight), kept in zip(pairs, keep):
            if kept and weight and self.affinity_weight:
                value = self.affinity(student.image_normed, student.text_normed, student.logit_scale,
                                      F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1),
                                      targets.logit_scale)["affinity"]
                out[name] = self.affinity_weight * weight * value
            else:
                out[name] = student.image.new_zeros(())
        return out


class DistillClip(Method):
    def __init__(self, settings: LossSettings, *, gather: dict, **_):
        super().__init__()
        self.loss = L.DistillClipLossTerms(settings.resolved_contrastive_weight(), settings.distill_weight, **gather)

    def forward(self, student, targets, generator=None) -> dict:
        return self.loss(student.image_normed, student.text_normed, student.logit_scale, targets.image,
                         targets.text, targets.logit_scale)


class TinyCLIP(Method):
    def __init__(self, settings: LossSettings, *, gather: dict, **_):
        super().__init__()
        self.contrastive = L.ContrastiveLoss(settings.resolved_contrastive_weight(), **gather)
        self.affinity = L.AffinityMimickingLoss(settings.distill_weight, **gather)

    def forward(self, student, targets, generator=None) -> dict:
        f_img, f_txt = student.image_normed, student.text_normed
        return {**self.contrastive(f_img, f_txt, student.logit_scale),
                **self.affinity(f_img, f_txt, student.logit_scale, targets.image, targets.text, targets.logit_scale)}


class CLIPKD(Method):
    """CLIP-KD's FD + ICL + CRD beside the contrastive term; a linear projection per modality maps the student
    to the teacher's width when they differ (a trainable part of the method, so checkpointed and under DDP)."""

    def __init__(self, settings: LossSettings, *, student_dim: int, teacher_dims: tuple[int, int], gather: dict,
                 **_):
        super().__init__()
        t_img, t_txt = teacher_dims
        self.proj_image = nn.Linear(student_dim, t_img) if student_dim != t_img else None
        self.proj_text = nn.Linear(student_dim, t_txt) if student_dim != t_txt else None
        self.contrastive = L.ContrastiveLoss(settings.resolved_contrastive_weight(), **gather)
        self.fd = L.FeatureDistillationLoss(settings.fd_weight)
        self.icl = L.InteractiveContrastiveLoss(settings.icl_weight, **gather)
        self.crd = L.ContrastiveRelationalLoss(settings.crd_weight, **gather)

    def forward(self, student, targets, generator=None) -> dict:
        w_img, w_txt, scale = student.image, student.text, student.logit_scale
        return {**self.contrastive(student.image_normed, student.text_normed, scale),
                **self.fd(w_img, w_txt, targets.image, targets.text, self.proj_image, self.proj_text),
                **self.icl(w_img, w_txt, scale, targets.image, targets.text, self.proj_image, self.proj_text),
                **self.crd(student.image_normed, student.text_normed, scale, targets.image, targets.text,
                           targets.logit_scale)}


def method_class(loss: str) -> type:
    """The class `settings.METHODS` names for a --loss."""
    return globals()[METHODS[loss].class_name]


def build_method(settings: LossSettings, *, student_dim: int, teacher_dims: Optional[tuple[int, int]] = None,
                 num_rdms: int = 0, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0,
                 world_size: int = 1) -> Method:
    settings.validate()
    row = METHODS[settings.loss]
    if row.needs_teacher and teacher_dims is None:
        raise UserError(f"--loss {settings.loss} needs teacher targets: an embedding cache or an online teacher")
    gather = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
    method = method_class(settings.loss)(settings, student_dim=student_dim, teacher_dims=teacher_dims,
                                         num_rdms=num_rdms, gather=gather)
    method.needs_teacher, method.uses_rdms = row.needs_teacher, row.uses_rdms
    return method
