"""Stage `train-rdm` on a CLIP teacher's embedding cache: read the cache and its zero-shot set, train the image
and text RDM family (rdm/training.py), save it and report it held out. `commands/train_rdm.py` is its shell."""
from __future__ import annotations


def output_paths(cfg) -> dict:
    from pathlib import Path

    if cfg.out and cfg.out.endswith((".pt", ".pth")):
        ckpt = Path(cfg.out)
        return {"checkpoint": ckpt, "dir": ckpt.parent, "stem": f"{ckpt.stem}_eval",
                "config": ckpt.parent / f"{ckpt.stem}_config.yaml", "log": f"{ckpt.stem}_out.log"}
    folder = Path(cfg.out) if cfg.out else Path(cfg.logs) / (cfg.name or f"rdm-{Path(cfg.cache).resolve().name}")
    return {"checkpoint": folder / "rdm.pt", "dir": folder, "stem": "rdm_eval", "config": folder / "config.yaml",
            "log": "out.log"}


def check_outputs(cfg, paths: dict) -> None:
    from ..output_checks import check_file_target, check_folder_target, refuse_to_replace

    if cfg.out and cfg.out.endswith((".pt", ".pth")):
        check_file_target(paths["checkpoint"], "--out")
    else:
        check_folder_target(paths["dir"], "--out" if cfg.out else "--logs/--name")
    refuse_to_replace([paths["checkpoint"]], "--out", cfg.overwrite, "an RDM checkpoint")


def read_caches(cfg):
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


def held_out_embeddings(cfg, holdout: float) -> dict:
    """The evaluation set (held out of the cache, or --eval-cache), read on every rank before training so that a
    missing one stops all ranks."""
    from ..data.embedding_cache import iter_cached_embeddings
    from ..errors import DataError
    from .training import collect_embeddings

    data = collect_embeddings(iter_cached_embeddings(cfg.eval_cache or cfg.cache, batch_size=4096, shuffle=False),
                              holdout_fraction=holdout, max_samples=cfg.max_eval_samples)
    if not data.get("key"):
        raise DataError(f"no held-out samples in {cfg.cache} at --holdout-fraction {cfg.holdout_fraction}; "
                        f"raise it or give --eval-cache")
    return data


def build_family(cfg, meta: dict, holdout: float):
    from ..core.rdm import RDMFamily

    return RDMFamily.build(
        {"image": meta["image_dim"], "text": meta["text_dim"]}, cfg.rates,
        meta={"teacher": meta.get("teacher"), "teacher_fingerprint": meta.get("teacher_fingerprint"),
              "image_dim": meta["image_dim"], "text_dim": meta["text_dim"], "normalized": meta.get("normalized"),
              "cache": str(cfg.cache), "holdout_fraction": holdout, "epochs": None},
        **cfg.architecture())


def save_and_report(cfg, paths: dict, family, data: dict, zeroshot, stats, *, trained: int, epochs: int,
                    holdout: float, env, trackers) -> None:
    """The main rank's end of a run: the checkpoint, its config, and the held-out evaluation (report, trackers)."""
    import logging

    from .. import config as config_lib
    from ..engine.trackers import rdm_val_results
    from .report import write_report
    from .training import evaluate_family

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


def run_stage(cfg) -> int:
    import logging

    import torch

    from .. import config as config_lib
    from ..data.embedding_cache import iter_cached_embeddings, num_cached_batches
    from ..engine.distributed import all_reduce_mean, barrier, cleanup, init_distributed
    from ..engine.trackers import Trackers, parse_report_to
    from ..errors import DataError
    from ..output_checks import hold_run_lock
    from .training import train_family
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
