"""What an RDM is made of, as plain data (torch-free): `RateDistortionConfig` rebuilds one RDM and is stored
as a dict in the RDM checkpoint; `RDMArchitecture` is the part every RDM of a family shares, and its fields
are also `cifd-clip train-rdm`'s and `cls-train-rdm`'s options (one home for each option; the three defaults
that differ on the classification path are in CLASSIFIER_DEFAULTS, with why)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..config import option, redefault
from ..errors import UserError

ACTIVATION_NAMES = ("gelu", "relu", "silu")
DISTORTIONS = ("mse", "smooth_l1")
QUANTIZATIONS = ("ste", "noise")


@dataclass
class RDMArchitecture:
    """Defaults are for CLIP embeddings (docs/method.md): a 2+2-layer MLP of width 1024 around a 256-channel
    bottleneck, activation after layers 1 and 3 (the paper's ImageNet layout), MSE on L2-normalised teacher
    embeddings."""

    hidden_dim: int = option(1024, "width of the RDMs' hidden layers")
    bottleneck_dim: int = option(256, "channels of the entropy bottleneck")
    encoder_layers: int = option(2, "linear layers before the bottleneck (the last one outputs the bottleneck)")
    decoder_layers: int = option(2, "linear layers after the bottleneck (the last one outputs the embedding)")
    activation_after: Optional[list[int]] = option(
        None, "1-based indices of the linear layers followed by an activation (default: every hidden layer "
              "except the one feeding the bottleneck, i.e. 1 and 3 for 2 + 2 layers)")
    activation: str = option("gelu", "activation after hidden layers", choices=list(ACTIVATION_NAMES))
    distortion: str = option("mse", "distortion D(X, X̂), summed over the embedding dimension",
                             choices=list(DISTORTIONS))
    normalize_input: bool = option(True, "L2-normalise teacher embeddings before the RDM (they are its targets)")
    train_quantization: str = option(
        "ste", "what the decoder reads while training: the rounded Ŷ with a straight-through gradient, as when "
               "teaching (ste), or Y + U(-½,½) (noise, the paper's literal reading); the rate always uses the "
               "noise. With noise, high-R RDMs came out of order (docs/method.md)", choices=list(QUANTIZATIONS))
    init_scale: float = option(1.0, "initial width of the bottleneck's factorised density (CompressAI's 10 suits "
                                    "image codecs; at 10 every rate starts at ~5 bits per channel)")
    aux_weight: float = option(1.0, "weight of the bottleneck's quantile loss (it trains only the quantiles)")

    def architecture(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RDMArchitecture)}


# RDMArchitecture's options whose default differs on the classification path: (its default, why)
CLASSIFIER_DEFAULTS = {
    "hidden_dim": (512, "the paper's ImageNet RDM on a ResNet-34 teacher's 512 features"),
    "bottleneck_dim": (64, "a classifier's pooled features are narrower than CLIP's cache holds (64 to 2048 "
                           "dimensions on the paper's CIFAR and ImageNet teachers)"),
    "normalize_input": (False, "the paper reconstructs a classifier's features as they are"),
}


def classifier_default(name: str):
    """cls-train-rdm's declaration of RDMArchitecture's `name`: its help and choices, CLASSIFIER_DEFAULTS' value."""
    return redefault(RDMArchitecture, name, CLASSIFIER_DEFAULTS[name][0])


def rate_continuation_option(default: bool):
    """train-rdm's and cls-train-rdm's --rate-continuation (one help for both; each path's default is the one
    docs/studies/rdm-ordering.md found ordered more often on its caches)."""
    return option(default, "train the highest-R RDM of each modality first, then every RDM from its weights "
                           "(--epochs each), instead of every RDM from its own initialisation at once; "
                           "docs/studies/rdm-ordering.md measured which orders the family by R more often")


@dataclass
class RateDistortionConfig(RDMArchitecture):
    """Everything needed to rebuild one RDM (plain types only: stored as a dict in checkpoints)."""

    input_dim: int = 0
    rate_weight: float = 1000.0  # R: multiplies the distortion; larger R -> higher rate, stronger RDM
    num_classes: int = 0  # > 0: classification variant with a linear head X̂ -> logits
    reconstruction_weight: float = 1.0  # 0 trains without the reconstruction term (the paper's simple CNN)
    kl_weight: float = 1.0  # λ_KL on KL(v̂_T ‖ v̂_RDM) (classification only)
    temperature: float = 2.0  # τ of that KL (classification only)

    def validate(self) -> "RateDistortionConfig":
        if self.input_dim < 1 or self.hidden_dim < 1 or self.bottleneck_dim < 1:
            raise UserError("RDM input_dim, hidden_dim and bottleneck_dim must be positive integers")
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise UserError("an RDM needs at least one encoder layer and one decoder layer")
        if self.activation not in ACTIVATION_NAMES:
            raise UserError(f"RDM activation must be one of {list(ACTIVATION_NAMES)}, got {self.activation!r}")
        if self.distortion not in DISTORTIONS:
            raise UserError(f"RDM distortion must be one of {list(DISTORTIONS)}, got {self.distortion!r}")
        if not (self.rate_weight > 0 and math.isfinite(self.rate_weight)):
            raise UserError(f"RDM rate weight R must be a positive number, got {self.rate_weight!r}")
        if not self.temperature > 0:
            raise UserError(f"RDM temperature must be positive, got {self.temperature!r}")
        if self.train_quantization not in QUANTIZATIONS:
            raise UserError(f"RDM train_quantization must be one of {list(QUANTIZATIONS)}, got "
                            f"{self.train_quantization!r}")
        if not (self.init_scale > 0 and math.isfinite(self.init_scale)):
            raise UserError(f"RDM init_scale must be a positive number, got {self.init_scale!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RateDistortionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"RDM config has unknown keys {sorted(unknown)} (written by a newer cifd_clip?)")
        return cls(**data).validate()
