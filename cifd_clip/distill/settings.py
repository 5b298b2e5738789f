"""Every distillation method's settings as one typed object: it is the `distill` stage's options (the
fields become `--dashed-flags`) and it travels whole from the config to the method that uses it.

Torch-free, so that `cifd-clip --help` stays fast. `METHODS` is the table of loss names, what each one
is and which fields it reads; `cifd_clip.distill.methods` builds the modules. A field that the chosen
method does not read is refused when it is set to anything but its default (one sentence naming it),
so that no option is silently ignored.

Defaults of the CIFD options come from the study in `studies/clip_cifd.py` (docs/studies/clip-cifd.md);
docs/method.md says which run justifies each.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ..config import option
from ..errors import ConfigError
from ..core.method_settings import refuse_unread_settings
from ..core.cifd_options import CIFDOptions

# λ_CL when --contrastive-weight is not given, for CIFD and the baselines alike (open_clip and CLIP-KD weigh
# their contrastive term 1.0).
CONTRASTIVE_WEIGHT = 1.0

_CIFD = ("contrastive_weight", "teacher_weight", "rdm_weights", "normalize_targets", "ibm", "ibm_weight",
         "ibm_hidden_dim", "ibm_decoder", "ibm_orthogonal_map", "ibm_input", "kd_dropout", "distortion",
         "rdm_teaching")

class MethodRow(NamedTuple):
    """One --loss: what it is, the settings it reads, whether it needs teacher targets and reads the RDMs, and
    its class in distill/methods.py. Adding a method is its class plus one row here."""
    description: str
    reads: tuple
    needs_teacher: bool
    uses_rdms: bool
    class_name: str


METHODS = {
    "cifd": MethodRow("CIFD: contrastive + feature terms against the teacher and the RDMs through the IBM", _CIFD,
                      True, True, "CIFD"),
    "cifd_affinity": MethodRow("CIFD plus the teacher's and each RDM's batch affinities (open_clip's distill term) "
                               "as weak teachers", _CIFD + ("distill_weight", "teacher_logit_scale"), True, True,
                               "CIFDAffinity"),
    "distill_clip": MethodRow("open_clip's DistillClipLoss: contrastive + the teacher's batch affinities",
                              ("contrastive_weight", "distill_weight", "teacher_logit_scale"), True, False,
                              "DistillClip"),
    "clipkd": MethodRow("CLIP-KD: contrastive + FD + ICL + CRD",
                        ("contrastive_weight", "fd_weight", "icl_weight", "crd_weight", "teacher_logit_scale"), True,
                        False, "CLIPKD"),
    "tinyclip": MethodRow("TinyCLIP: contrastive + affinity mimicking",
                          ("contrastive_weight", "distill_weight", "teacher_logit_scale"), True, False, "TinyCLIP"),
    "contrastive": MethodRow("no teacher: open_clip's ClipLoss only (what `cifd-clip train` runs)",
                             ("contrastive_weight",), False, False, "Contrastive"),
}


def method_reads(loss: str, field_name: str) -> bool:
    return field_name in METHODS[loss].reads


DISTILL_LOSSES = [name for name, row in METHODS.items() if row.needs_teacher]


@dataclass
class LossSettings(CIFDOptions):
    loss: str = option("cifd", "distillation method: " + "; ".join(f"{k}: {v.description}" for k, v in METHODS.items()
                                                                   if v.needs_teacher), choices=DISTILL_LOSSES)
    contrastive_weight: Optional[float] = option(
        None, f"weight of the student's contrastive term, λ_CL for CIFD (default: {CONTRASTIVE_WEIGHT:g} for every "
              f"loss; the paper's 0.005 leaves a short run's towers unaligned, see docs/method.md)",
        aliases=["lambda_cl"])
    teacher_weight: float = option(1.0, "CIFD: weight of the feature term against the teacher")
    normalize_targets: bool = option(True, "CIFD: L2-normalise the teacher and RDM targets before the feature "
                                           "distance (--no-normalize-targets: use them as cached / reconstructed)")
    ibm_decoder: str = option("isometric", "CIFD: the IBM decoder: one angle-preserving map s·Q for both "
                                           "modalities (isometric), one linear/MLP map for both plus a per-modality "
                                           "offset (shared), or one per modality (separate, the paper's literal "
                                           "reading)", choices=["isometric", "shared", "separate"])
    ibm_orthogonal_map: str = option("cayley", "CIFD: how the isometric decoder's Q is computed from its "
                                               "generator: the Cayley map, a linear solve, or torch's matrix "
                                               "exponential, several times dearer per step (earlier rounds' "
                                               "checkpoints)", choices=["cayley", "matrix_exp"])
    distill_weight: float = option(1.0, "distill_clip / tinyclip / cifd_affinity: weight of the affinity term")
    fd_weight: float = option(2000.0, "clipkd: FD weight (CLIP-KD's best: 2000)")
    icl_weight: float = option(1.0, "clipkd: ICL weight")
    crd_weight: float = option(1.0, "clipkd: CRD weight")
    teacher_logit_scale: Optional[float] = option(
        None, "teacher logit scale of the affinity terms (default: the one the cache recorded, or the online "
              "teacher's own)")

    def resolved_contrastive_weight(self) -> float:
        if self.contrastive_weight is not None:
            return float(self.contrastive_weight)
        return CONTRASTIVE_WEIGHT

    def validate(self) -> None:
        if self.loss not in METHODS:
            raise ConfigError(f"--loss must be one of {', '.join(METHODS)}, got {self.loss!r}")
        self.validate_cifd_options()
        refuse_unread_settings(self, LossSettings, METHODS[self.loss].reads)
        for name in ("teacher_weight", "distill_weight", "fd_weight", "icl_weight", "crd_weight"):
            _check_weight(name, getattr(self, name))
        if self.contrastive_weight is not None:
            _check_weight("contrastive_weight", self.contrastive_weight)
        if self.ibm_decoder != "isometric" and self.ibm_orthogonal_map != LossSettings.ibm_orthogonal_map:
            raise ConfigError("--ibm-orthogonal-map sets the isometric decoder's map; --ibm-decoder "
                              f"{self.ibm_decoder} has none")
        if self.teacher_logit_scale is not None and not 0 < self.teacher_logit_scale < float("inf"):
            raise ConfigError(f"--teacher-logit-scale must be a positive number, got {self.teacher_logit_scale}")

    def loss_settings(self) -> "LossSettings":
        """This object's loss fields alone (a stage Config inherits them beside its own)."""
        return LossSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossSettings)})


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_weight(name: str, value: float) -> None:
    if not (value >= 0 and value < float("inf")):
        raise ConfigError(f"--{_flag(name)} must be a non-negative number, got {value}")
