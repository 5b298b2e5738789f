"""Train image and text Rate-Distortion Modules at several rates on cached teacher embeddings.

One pass over the embedding cache per epoch feeds every RDM of both modalities (with `--rate-continuation`,
the highest-R RDMs first, then every RDM from their weights); the teacher model is never loaded. Runs on CPU
or GPU, alone or under torchrun (each rank reads its own part of the cache).
Writes ONE checkpoint holding every RDM (load it with `cifd_clip.core.rdm.RDMFamily.load`) and a held-out
evaluation per RDM — rate in bits/sample measured with rounding, MSE and cosine similarity to the
teacher embedding, retrieval recall pairing the RDM's reconstruction with the teacher's other modality and,
given a zero-shot eval file (`cifd-clip embed --zeroshot-root`), zero-shot accuracy paired the same way —
as a markdown table, JSON and a rate-distortion plot. It warns when a higher R does not give a higher
rate and a lower distortion.

Outputs: `--out FILE.pt` puts FILE_eval.{md,json,png}, FILE_config.yaml and FILE_out.log beside it; `--out DIR`
(default <logs>/<name>) writes DIR/rdm.pt, DIR/rdm_eval.*, DIR/config.yaml, DIR/out.log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..engine.options import report_to_option, validate_trackers, wandb_project_option
from ..errors import ConfigError
from ..core.rdm_config import RDMArchitecture, rate_continuation_option


@dataclass
class Config(RDMArchitecture):
    cache: str = required("embedding cache folder written by `cifd-clip embed` (holds cache.json)")
    rates: list[float] = option([100.0, 300.0, 1000.0], "rate weights R, one RDM per modality and R "
                                                        "(larger R: higher rate, stronger RDM)")
    epochs: int = option(10, "passes over the cache (every cached view of an image is trained on), or more when "
                             "--min-steps asks for them")
    min_steps: int = option(0, "at least this many optimizer steps per training stage: a small cache gets more "
                               "epochs (0: --epochs alone; 300 gave lower distortion at every R on the demo's "
                               "caches but no better ordering, docs/studies/rdm-ordering.md)")
    batch_size: int = option(256, "embeddings per step per process")
    lr: float = option(1e-3, "Adam learning rate (cosine decay to lr/100)")
    density_lr_factor: float = option(10.0, "the bottlenecks' densities learn this many times faster than the "
                                            "networks (at 1 every R keeps its initial rate for hundreds of steps)")
    rate_continuation: bool = rate_continuation_option(False)
    out: Optional[str] = option(None, "checkpoint FILE.pt or an output folder (default: <logs>/<name>)")
    overwrite: bool = option(False, "replace an RDM checkpoint that is already there (students trained on it keep "
                                    "a path to it)")
    logs: str = option("./logs", "folder for run outputs when --out is not given")
    name: Optional[str] = option(None, "run name under --logs (default: rdm-<cache folder name>)")
    eval_cache: Optional[str] = option(None, "embedding cache of an eval set made by the same teacher; by "
                                             "default a --holdout-fraction of --cache is held out instead")
    holdout_fraction: float = option(0.05, "fraction of --cache held out for evaluation (by key) when there is no "
                                           "--eval-cache")
    max_eval_samples: int = option(10000, "evaluate on at most this many samples")
    zeroshot_eval: Optional[str] = option(None, "zero-shot eval file written by `cifd-clip embed --zeroshot-root` "
                                                "(default: the cache's zeroshot_eval.pt when there is one)")
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    log_every: int = option(50, "log the loss terms every N steps")
    log_every_rank: bool = option(False, "every process writes its own log file beside the checkpoint too (rank 0 "
                                         "always writes out.log, or FILE_out.log for --out FILE.pt)")
    report_to: str = report_to_option()
    wandb_project_name: str = wandb_project_option()

    def validate(self):
        validate_trackers(self)
        if not self.rates or any(not r > 0 for r in self.rates):
            raise ConfigError(f"--rates must be positive numbers, got {self.rates}")
        if len(set(self.rates)) != len(self.rates):
            raise ConfigError(f"--rates must be distinct, got {self.rates}")
        if self.min_steps < 0:
            raise ConfigError(f"--min-steps must be 0 or more, got {self.min_steps}")
        for key in ("epochs", "batch_size", "hidden_dim", "bottleneck_dim", "encoder_layers", "decoder_layers",
                    "max_eval_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "density_lr_factor", "init_scale"):
            if not 0 < getattr(self, key) < float("inf"):
                raise ConfigError(f"--{key.replace('_', '-')} must be a positive number, got {getattr(self, key)}")
        if not 0 <= self.holdout_fraction < 0.5:
            raise ConfigError(f"--holdout-fraction must be in [0, 0.5), got {self.holdout_fraction}")
        if self.eval_cache is None and self.holdout_fraction == 0:
            raise ConfigError("give --eval-cache or a --holdout-fraction above 0: the RDMs must be evaluated on "
                              "held-out embeddings")


def run(cfg: Config) -> int:
    from ..rdm.clip_stage import run_stage

    return run_stage(cfg)
