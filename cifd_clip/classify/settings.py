"""Every classification distillation method's settings as one typed object (torch-free): the `cls-distill`
stage's options, passed whole to the method. A field the chosen method does not read is refused."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import option
from ..distill.rdm_teaching import rdm_teaching_option
from ..errors import ConfigError

_KD = ("ce_weight", "kd_weight", "temperature", "kd_dropout")
_IBM = ("ibm", "ibm_weight", "ibm_hidden_dim", "ibm_input", "embedding_weight", "distortion", "rdm_weights",
        "rdm_teaching")

# loss name -> (what it is, the fields it reads, the paper it comes from)
METHODS = {
    "ce": ("cross-entropy only: a teacher, an assistant or the no-KD student", ("ce_weight",), "-"),
    "kd": ("Hinton's KD from the teacher; with --assistants the teacher is the first assistant (TAKD) or all "
           "of them join the teacher with KD dropout (DGKD: --kd-dropout 0.25)", _KD,
           "Hinton et al. 2015; Mirzadeh et al. 2020 (TAKD); Son et al. 2021 (DGKD)"),
    "cifd": ("CIFD: CE + KD from the teacher and each RDM + feature terms through the IBM (the paper)",
             _KD + _IBM, "Saidutta et al. 2024"),
    "dist": ("DIST: inter- and intra-class Pearson correlation of the softened predictions",
             ("ce_weight", "kd_weight", "temperature", "dist_beta", "dist_gamma"), "Huang et al. 2022"),
    "normkd": ("NormKD: KD with each sample's logits normalised by their std (temperature per sample)",
               ("ce_weight", "kd_weight", "temperature"), "Chi et al. 2023"),
    "crd": ("CRD with in-batch negatives: contrastive loss between the student's and the teacher's projected "
            "features (the paper keeps a 16384-sample memory bank; here the batch is the negatives)",
            ("ce_weight", "kd_weight", "temperature", "crd_weight", "crd_dim", "crd_temperature"),
            "Tian et al. 2020"),
    "ft": ("Factor transfer on the last feature map: a paraphraser's factor of the teacher's map against a "
           "translator's of the student's (L1 of normalised factors); the paraphraser learns its reconstruction "
           "in the same run instead of beforehand", ("ce_weight", "kd_weight", "temperature", "ft_weight",
                                                       "ft_rate"), "Kim et al. 2018"),
    "at": ("Attention transfer on the last feature map: ‖a_S − a_T‖ of L2-normalised spatial attention "
           "(the paper uses every stage; here the last one)", ("ce_weight", "kd_weight", "temperature",
                                                              "at_weight"), "Zagoruyko & Komodakis 2017"),
}


@dataclass
class ClassifySettings:
    loss: str = option("cifd", "method: " + "; ".join(f"{k}: {v[0]}" for k, v in METHODS.items()),
                       choices=list(METHODS))
    ce_weight: float = option(1.0, "weight of CE(y, student logits)")
    kd_weight: float = option(1.0, "λ_KL: weight of each KD term (teacher, assistants, RDMs)")
    temperature: float = option(2.0, "τ of the KD terms (the paper's 2; RepDistiller's KD uses 4)")
    kd_dropout: float = option(0.0, "drop each teacher/assistant/RDM term with this probability per step "
                                    "(DGKD and CIFD on CIFAR: 0.25)")
    rdm_weights: list[float] = option([], "CIFD: λ_n per RDM in rate order (default 1.0 each)")
    embedding_weight: float = option(100.0, "CIFD: weight of the feature terms (per-element MSE; the paper's 100)")
    ibm: bool = option(True, "CIFD: information bottleneck on the student's features (--no-ibm: its decoder alone)")
    ibm_weight: float = option(0.005, "CIFD: λ_I of the IBM rate term in bits (CIFAR 0.005, ImageNet 0.001)")
    ibm_hidden_dim: int = option(0, "CIFD: hidden width of a 2-layer IBM decoder (0: one linear layer)")
    ibm_input: str = option("raw", "CIFD: noise on the student's pooled features as they are (raw) or at unit "
                                   "RMS per dimension (normalized)", choices=["raw", "normalized"])
    distortion: str = option("mse", "CIFD: feature distance (ImageNet: smooth_l1)", choices=["mse", "smooth_l1"])
    rdm_teaching: str = rdm_teaching_option()
    dist_beta: float = option(1.0, "DIST: weight of the inter-class relation")
    dist_gamma: float = option(1.0, "DIST: weight of the intra-class relation")
    crd_weight: float = option(0.8, "CRD: weight of the contrastive term (RepDistiller's 0.8)")
    crd_dim: int = option(128, "CRD: width of the projected features")
    crd_temperature: float = option(0.07, "CRD: temperature of the contrastive term")
    at_weight: float = option(1000.0, "AT: weight of the attention-transfer term (RepDistiller's 1000)")
    ft_weight: float = option(200.0, "FT: weight of the factor term (RepDistiller's 200)")
    ft_rate: float = option(0.5, "FT: paraphraser factor channels as a fraction of the teacher map's")

    def validate(self) -> None:
        used = set(METHODS[self.loss][1])
        for f in dataclasses.fields(ClassifySettings):
            if f.name == "loss" or f.name in used:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if getattr(self, f.name) != default:
                raise ConfigError(f"--{f.name.replace('_', '-')} is not used by --loss {self.loss}")
        inf = float("inf")
        for name in ("ce_weight", "kd_weight", "embedding_weight", "ibm_weight", "dist_beta", "dist_gamma",
                     "crd_weight", "at_weight", "ft_weight"):
            if not 0 <= getattr(self, name) < inf:
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-negative number, got {getattr(self, name)}")
        if any(not 0 <= w < inf for w in self.rdm_weights):
            raise ConfigError(f"--rdm-weights must be non-negative numbers, got {self.rdm_weights}")
        for name in ("temperature", "crd_temperature"):
            if not 0 < getattr(self, name) < inf:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(self, name)}")
        if not 0 <= self.kd_dropout < 1:
            raise ConfigError(f"--kd-dropout must be in [0, 1), got {self.kd_dropout}")
        if not 0 < self.ft_rate <= 4:
            raise ConfigError(f"--ft-rate must be in (0, 4], got {self.ft_rate}")
        if self.crd_dim < 1 or self.ibm_hidden_dim < 0:
            raise ConfigError("--crd-dim must be positive and --ibm-hidden-dim not negative")

    def classify_settings(self) -> "ClassifySettings":
        return ClassifySettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ClassifySettings)})
