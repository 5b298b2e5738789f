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


def output_paths(cfg: Config) -> dict:
    from pathlib import Path

    if cfg.out and cfg.out.endswith((".pt", ".pth")):
        ckpt = Path(cfg.out)
        return {"checkpoint": ckpt, "dir": ckpt.parent, "stem": f"{ckpt.stem}_eval",
                "config": ckpt.parent / f"{ckpt.stem}_config.yaml", "log": f"{ckpt.stem}_out.log"}
    folder = Path(cfg.out) if cfg.out else Path(cfg.logs) / (cfg.name or f"rdm-{Path(cfg.cache).resolve().name}")
    return {"checkpoint": folder / "rdm.pt", "dir": folder, "stem": "rdm_eval", "config": folder / "config.yaml",
            "log": "out.log"}


def check_outputs(cfg: Config, paths: dict) -> None:
    from ..outputs import check_file_target, check_folder_target, refuse_to_replace

    if cfg.out and cfg.out.endswith((".pt", ".pth")):
        check_file_target(paths["checkpoint"], "--out")
    else:
        check_folder_target(paths["dir"], "--out" if cfg.out else "--logs/--name")
    refuse_to_replace([paths["checkpoint"]], "--out", cfg.overwrite, "an RDM checkpoint")


def read_caches(cfg: Config):
    """The training cache's metadata and the zero-shot set beside it (or --zeroshot-eval); an --eval-cache must
    come from the same teacher."""
    from pathlib import Path

    from ..data.embedding_cache import check_cache_compatible, read_cache_meta
    from ..errors import DataError
    from ..evaluation import cached_zeroshot

    meta = read_cache_meta(cfg.cache)
    if cfg.eval_cache:
        eval_meta = read_cache_meta(cfg.eval_cache)
        check_cache_compatible(eval_meta, teacher_fingerprint=meta["teacher_fingerprint"],
                               image_dim=meta["image_dim"], text_dim=meta["text_dim"], normalized=meta["normalized"])
    zeroshot = None
    zeroshot_path = cfg.zeroshot_eval or Path(cfg.cache) / cached_zeroshot.FILE_NAME
    if cfg.zeroshot_eval or zeroshot_path.is_file():
        zeroshot = cached_zeroshot.read_zeroshot_eval(zeroshot_path)
        cached_zeroshot.check_matches_cache(zeroshot, meta)
    if meta["num_samples"] < 1:
        raise DataError(f"embedding cache {cfg.cache} holds no samples")
    return meta, zeroshot


def held_out_embeddings(cfg: Config, holdout: float) -> dict:
    """The evaluation set (held out of the cache, or --eval-cache), read on every rank before training so that a
    missing one stops all ranks."""
    from ..data.embedding_cache import iter_cached_embeddings
    from ..errors import DataError
    from ..rdm.training import collect_embeddings

    data = collect_embeddings(iter_cached_embeddings(cfg.eval_cache or cfg.cache, batch_size=4096, shuffle=False),
                              holdout_fraction=holdout, max_samples=cfg.max_eval_samples)
    if not data.get("key"):
        raise DataError(f"no held-out samples in {cfg.cache} at --holdout-fraction {cfg.holdout_fraction}; "
                        f"raise it or give --eval-cache")
    return data


def build_family(cfg: Config, meta: dict, holdout: float):
    from ..core.rdm import RDMFamily

    return RDMFamily.build(
        {"image": meta["image_dim"], "text": meta["text_dim"]}, cfg.rates,
        meta={"teacher": meta.get("teacher"), "teacher_fingerprint": meta.get("teacher_fingerprint"),
              "image_dim": meta["image_dim"], "text_dim": meta["text_dim"], "normalized": meta.get("normalized"),
              "cache": str(cfg.cache), "holdout_fraction": holdout, "epochs": None},
        **cfg.architecture())


def save_and_report(cfg: Config, paths: dict, family, data: dict, zeroshot, stats, *, trained: int, epochs: int,
                    holdout: float, env, trackers) -> None:
    """The main rank's end of a run: the checkpoint, its config, and the held-out evaluation (report, trackers)."""
    import logging

    from .. import config as config_lib
    from ..engine.trackers import rdm_val_results
    from ..rdm.report import write_report
    from ..rdm.training import evaluate_family

    family.to("cpu")
    family.meta["trained_samples"] = trained
    family.save(paths["checkpoint"])
    config_lib.save(cfg, paths["config"])
    report = evaluate_family(family, data, retrieval=len(data["key"]) > 1, zeroshot=zeroshot)
    report.update({
        "eval_source": ("eval cache " if cfg.eval_cache else f"{holdout:g} held out of ") +
                       str(cfg.eval_cache or cfg.cache),
        "checkpoint": str(paths["checkpoint"]),
        "train": {"epochs": epochs, "steps": stats.steps, "samples": trained,
                  "seconds": stats.seconds, "world_size": env.world_size, "device": str(env.device),
                  "embeddings_per_second": trained / max(stats.seconds, 1e-9),
                  "num_rdms": 2 * len(cfg.rates)},
    })
    trackers.log_val(rdm_val_results(report["rdms"], report.get("teacher")), stats.steps, epochs)
    trackers.close()
    files = write_report(report, paths["dir"], paths["stem"])
    for warning in report["warnings"]:
        logging.getLogger("cifd_clip.train_rdm").warning(warning)
    print(f"wrote {len(cfg.rates) * 2} RDMs to {paths['checkpoint']}; evaluation in {files['markdown']} "
          f"and {files['plot']}")


def run(cfg: Config) -> int:
    import logging

    import torch

    from .. import config as config_lib
    from ..data.embedding_cache import iter_cached_embeddings, num_cached_batches
    from ..engine.distributed import all_reduce_mean, barrier, cleanup, init_distributed
    from ..engine.trackers import Trackers, parse_report_to
    from ..errors import DataError
    from ..outputs import hold_run_lock
    from ..rdm.training import train_family
    from ..runlog import open_run_log

    log = logging.getLogger("cifd_clip.train_rdm")
    meta, zeroshot = read_caches(cfg)
    paths = output_paths(cfg)
    check_outputs(cfg, paths)
    env = init_distributed(cfg.device)
    if env.is_main:
        hold_run_lock(paths["dir"], "output folder")
    if env.is_main or cfg.log_every_rank:
        open_run_log(paths["dir"], env.rank, env.world_size, cfg.log_every_rank, name=paths["log"])
    trackers = Trackers([])
    try:
        if env.world_size > meta["num_samples"]:
            raise DataError(f"the cache has {meta['num_samples']} samples, fewer than the {env.world_size} processes")
        holdout = 0.0 if cfg.eval_cache else cfg.holdout_fraction
        data = held_out_embeddings(cfg, holdout)
        torch.manual_seed(cfg.seed)  # same initial RDMs on every rank
        family = build_family(cfg, meta, holdout)
        torch.manual_seed(cfg.seed + 1 + env.rank)  # each rank draws its own quantisation noise
        if env.is_main:
            trackers = Trackers(parse_report_to(cfg.report_to), paths["dir"], cfg.name or paths["dir"].name,
                                config_lib.to_dict(cfg), cfg.wandb_project_name)

        def report_step(step: int, terms: dict) -> None:
            if trackers.names and terms and (step % cfg.log_every == 0 or step == 1):
                trackers.log_train({"step": step, "loss": float(sum(float(v) for v in terms.values())),
                                    **{k: float(v) for k, v in terms.items()}})

        steps = num_cached_batches(meta, batch_size=cfg.batch_size, world_size=env.world_size)
        epochs = max(cfg.epochs, -(-cfg.min_steps // max(steps, 1)))
        family.meta["epochs"] = epochs
        if env.is_main:
            log.info("training %d RDMs (%s x R=%s) on %d cached samples, %d processes, %d steps/epoch x %d epochs "
                     "on %s", len(cfg.rates) * 2, "image+text", ",".join(f"{r:g}" for r in cfg.rates),
                     meta["num_samples"], env.world_size, steps, epochs, env.device)
        stats = train_family(
            family,
            lambda epoch: iter_cached_embeddings(cfg.cache, batch_size=cfg.batch_size, rank=env.rank,
                                                 world_size=env.world_size, seed=cfg.seed, epoch=epoch,
                                                 all_views=True),
            epochs=epochs, lr=cfg.lr, device=env.device, rank=env.rank, world_size=env.world_size,
            steps_per_epoch=steps, holdout_fraction=holdout, log_every=cfg.log_every,
            density_lr_factor=cfg.density_lr_factor, continuation=cfg.rate_continuation,
            on_step=report_step if trackers.names else None)
        # ranks skip different numbers of held-out samples: count the ones really trained on
        trained = int(round(all_reduce_mean(env, torch.tensor(float(stats.samples))).item() * env.world_size))
        if env.is_main:
            save_and_report(cfg, paths, family, data, zeroshot, stats, trained=trained, epochs=epochs,
                            holdout=holdout, env=env, trackers=trackers)
        barrier(env)
    finally:
        trackers.close()
        cleanup(env)
    return 0
