"""The CIFD options both paths read, each declared once (torch-free): CLIP's `LossSettings` and classification's
`ClassifySettings` inherit them. Where a path's default differs, `PATH_DEFAULTS` holds both values and why."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..config import option, redefault
from ..errors import ConfigError
from .rdm_teaching import FORMS

CLIP, CLASSIFICATION = 0, 1

# option: (the CLIP path's default, the classification path's, why they differ)
PATH_DEFAULTS = {
    "ibm_weight": (1e-3, 0.005, "the paper's λ_I: 0.001 for ImageNet-scale embeddings, 0.005 for CIFAR-100 "
                                "(searched there over 0.001, 0.005, 0.01)"),
    "ibm_input": ("normalized", "raw", "CLIP: at unit RMS the noise keeps its size against the embedding, whose "
                                       "scale the student could otherwise grow until the noise is irrelevant "
                                       "(docs/method.md); classification keeps the paper's raw pooled features, "
                                       "with which its CIFAR settings were measured"),
}


@dataclass
class CIFDOptions:
    """Declared with the CLIP path's defaults; `classification_default` gives the other path its own."""

    rdm_weights: list[float] = option([], "CIFD: λ_n per RDM in rate order (default 1.0 each)")
    ibm: bool = option(True, "CIFD: the information bottleneck on the student's embedding (CLIP) or pooled features "
                             "(classification): ±½ noise and a rate term in bits (--no-ibm: its decoder alone). "
                             "On the CLIP path, with the default isometric decoder and normalized input, the noise "
                             "adds only a constant to the expected feature loss, so the default loss is in effect "
                             "cosine feature distillation through one orthogonal map (docs/method.md)")
    ibm_weight: float = option(PATH_DEFAULTS["ibm_weight"][CLIP], "CIFD: λ_I, weight of the IBM's rate term in bits "
                               "(0: no rate term; the paper's ImageNet 0.001, CIFAR-100 0.005)")
    ibm_hidden_dim: Optional[int] = option(None, "CIFD: hidden width of a 2-layer IBM decoder (default: 1 layer)")
    ibm_input: str = option(PATH_DEFAULTS["ibm_input"][CLIP], "CIFD: what the IBM adds its noise to: the "
                            "student's features scaled to unit RMS per dimension (√d·W/‖W‖, normalized) or as they "
                            "are (raw)", choices=["normalized", "raw"])
    kd_dropout: float = option(0.0, "drop each teacher, assistant or RDM term with this probability per step "
                                    "(DGKD; CIFD on CIFAR-100: 0.25)")
    distortion: str = option("mse", "CIFD: the feature distance, squared error or smooth-L1 (the paper's ImageNet "
                                    "setting); CLIP sums it over the embedding's dimensions, classification averages "
                                    "it (its --embedding-weight is per element)", choices=["mse", "smooth_l1"])
    rdm_teaching: str = option("mean", "CIFD: how the RDMs teach (docs/method.md): " +
                               "; ".join(f"{k}: {v}" for k, v in FORMS.items()), choices=list(FORMS))

    def validate_cifd_options(self) -> None:
        if self.ibm_hidden_dim == 0:  # cls-distill's config.yaml said 0 for 1 layer before
            self.ibm_hidden_dim = None
        declared = next(f.default for f in dataclasses.fields(self) if f.name == "ibm_weight")  # this path's
        if not self.ibm and self.ibm_weight != declared:
            raise ConfigError("--ibm-weight sets the IBM's rate term, which --no-ibm removes; give one of the two")
        for name, value in [("ibm_weight", self.ibm_weight)] + [("rdm_weights", w) for w in self.rdm_weights]:
            if not 0 <= value < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-negative number, got {value}")
        if not 0.0 <= self.kd_dropout < 1.0:
            raise ConfigError(f"--kd-dropout must be in [0, 1), got {self.kd_dropout}")
        if self.ibm_hidden_dim is not None and self.ibm_hidden_dim < 1:
            raise ConfigError(f"--ibm-hidden-dim must be a positive integer, got {self.ibm_hidden_dim}")


def classification_default(name: str):
    """The classification path's declaration of CIFDOptions' `name`: its help and choices, its PATH_DEFAULTS value."""
    return redefault(CIFDOptions, name, PATH_DEFAULTS[name][CLASSIFICATION])
