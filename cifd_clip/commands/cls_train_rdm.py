"""Train the classification RDMs on a classifier teacher's cached features (no teacher model loaded).

Each RDM: CE(y, RDM logits) + λ_KL·KL(teacher‖RDM) + R·D(X, X̂) + rate (the paper's L'_R), every cached view
trained on. The highest-R RDM trains first, then every RDM from its weights (`--rate-continuation`). 5% of
the samples (by key) are held out, and each RDM keeps the epoch with the lowest held-out loss (the paper's
95:5 split "to pick the checkpoint"; the shared start is the highest R's best epoch). The
report shows each RDM's accuracy against its rate: the paper's rate-distortion curve. Paper settings: R =
1.0/0.8/0.6 (CIFAR), 1e4/5e3/1e3 with --distortion smooth_l1 (ImageNet), 30 epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from ..config import option, required
from ..engine.options import report_to_option, validate_trackers, wandb_project_option
from ..errors import ConfigError
from ..core.rdm_config import RDMArchitecture, classifier_default, rate_continuation_option


@dataclass
class Config(RDMArchitecture):
    cache: str = required("cache folder written by `cifd-clip cls-embed`")
    out: str = required("output folder (rdm.pt, rdm_eval.md/json/png, config.yaml)")
    rates: list[float] = option([1.0, 0.8, 0.6], "rate weights R, one RDM each (the paper's CIFAR values)")
    epochs: int = option(30, "passes over the cache (the paper: 30)")
    batch_size: int = option(256, "cached views per step")
    lr: float = option(1e-3, "Adam learning rate (cosine decay to lr/100)")
    density_lr_factor: float = option(10.0, "the bottlenecks' densities learn this many times faster")
    rate_continuation: bool = rate_continuation_option(True)
    kl_weight: float = option(1.0, "λ_KL on KL(teacher ‖ RDM)")
    temperature: float = option(2.0, "τ of that KL")
    holdout_fraction: float = option(0.05, "fraction of the samples held out to pick each RDM's best epoch (lowest "
                                           "held-out loss)")
    seed: int = option(0, "random seed")
    overwrite: bool = option(False, "replace an RDM checkpoint already in --out")
    hidden_dim: int = classifier_default("hidden_dim")
    bottleneck_dim: int = classifier_default("bottleneck_dim")
    normalize_input: bool = classifier_default("normalize_input")
    report_to: str = report_to_option()
    wandb_project_name: str = wandb_project_option()

    def validate(self) -> None:
        validate_trackers(self)
        if not self.rates or any(not r > 0 for r in self.rates) or len(set(self.rates)) != len(self.rates):
            raise ConfigError(f"--rates must be distinct positive numbers, got {self.rates}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be at least 1")
        if not 0 < self.holdout_fraction < 0.5:
            raise ConfigError(f"--holdout-fraction must be in (0, 0.5), got {self.holdout_fraction}")


def run(cfg: Config) -> int:
    from ..rdm.classifier_stage import run_stage

    return run_stage(cfg)
