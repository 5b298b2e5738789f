"""Stage `cls-train-rdm` on a classifier's cache: the RDMs of its pooled features, each with a linear head to
the logits, trained at several rates (rdm/training.py) and reported held out. `commands/cls_train_rdm.py` is
its shell."""
from __future__ import annotations


def held_out_outputs(cfg) -> dict:
    """The cache's held-out samples: the teacher's features and logits and the labels."""
    import torch

    from ..classify.cache import iter_cached_outputs
    from ..errors import UserError
    from .training import split_batch

    held = [split_batch(b, cfg.holdout_fraction, held_out=True) for b in iter_cached_outputs(cfg.cache, batch_size=4096)]
    held = {k: torch.cat([b[k] for b in held if b]) for k in ("t_image_emb", "t_logits", "label")}
    if not len(held["label"]):
        raise UserError(f"no held-out samples at --holdout-fraction {cfg.holdout_fraction}: raise it")
    return held


def held_out_accuracy(rdm, held: dict) -> float:
    import torch

    with torch.no_grad():
        return float((rdm.head(rdm.teach(held["t_image_emb"])).argmax(-1) == held["label"]).float().mean())


def held_out_objective(rdm, held: dict) -> float:
    """Minus the RDM's own loss (R·D + rate + CE + KL, rounded code) on the held-out samples. Picking the epoch
    by held-out accuracy instead, which is ~99 % from the first epochs on, took the first epoch to reach the
    top (by one sample of ~360), one that was far from done on R·D + rate: the family then came out of
    order by R (docs/studies/rdm-ordering.md)."""
    import torch

    was_training = rdm.training
    rdm.eval()
    try:
        with torch.no_grad():
            terms = rdm.loss(rdm(held["t_image_emb"]), held["label"], held["t_logits"])
    finally:
        rdm.train(was_training)
    return -float(sum(v for k, v in terms.items() if k != "rdm_aux"))


def save_and_report(cfg, out, family, held: dict, stats) -> None:
    """The checkpoint, its config, and the held-out report of every RDM at its best epoch."""
    import logging

    from .. import config as config_lib
    from .report import write_report
    from .training import evaluate_rdm, ordering_warnings

    log = logging.getLogger("cifd_clip.cls_train_rdm")
    rows = []
    for rdm in family.rdms("image"):  # each at its best epoch (train_family keeps it)
        rows.append({"modality": "image", "rate_weight": rdm.rate_weight, **evaluate_rdm(rdm, held["t_image_emb"]),
                     "acc1": held_out_accuracy(rdm, held)})
    teacher_acc = float((held["t_logits"].argmax(-1) == held["label"]).float().mean())
    family.save(out / "rdm.pt")
    config_lib.save(cfg, out / "config.yaml")
    report = {"num_samples": int(len(held["label"])), "eval_source": f"{cfg.holdout_fraction:g} held out of {cfg.cache}",
              "rdms": rows, "teacher": {"acc1": teacher_acc}, "warnings": ordering_warnings(rows),
              "train": {"epochs": cfg.epochs, "steps": stats.steps, "samples": stats.samples, "seconds": stats.seconds,
                        "embeddings_per_second": stats.embeddings_per_second, "num_rdms": len(rows)}}
    files = write_report(report, out, "rdm_eval")
    for row in rows:
        log.info("R=%g: %.1f bits, held-out top-1 %.2f%% (teacher %.2f%%)", row["rate_weight"], row["rate_bits"],
                 100 * row["acc1"], 100 * teacher_acc)
    for warning in report["warnings"]:
        log.warning(warning)
    print(f"wrote {len(rows)} RDMs to {out / 'rdm.pt'}; evaluation in {files['markdown']} and {files['plot']}")


def run_stage(cfg) -> int:
    import torch

    from .. import config as config_lib
    from ..classify.cache import iter_cached_outputs
    from ..data.embedding_cache import read_cache_meta
    from ..engine.trackers import Trackers, parse_report_to
    from ..errors import UserError
    from ..output_checks import check_folder_target, hold_run_lock, refuse_to_replace
    from ..core.rdm import RDMFamily
    from .training import train_family
    from ..runlog import open_run_log

    out = check_folder_target(cfg.out, "--out")
    refuse_to_replace([out / "rdm.pt"], "--out", cfg.overwrite, "an RDM checkpoint")
    meta = read_cache_meta(cfg.cache)
    if meta.get("kind") != "classification":
        raise UserError(f"{cfg.cache} is not a classifier's cache: make one with cifd-clip cls-embed")
    hold_run_lock(out, "output folder")
    open_run_log(out)
    held = held_out_outputs(cfg)
    torch.manual_seed(cfg.seed)
    family = RDMFamily.build({"image": int(meta["image_dim"])}, cfg.rates,
                             meta={"teacher": meta.get("teacher"), "teacher_fingerprint": meta.get("teacher_fingerprint"),
                                   "kind": "classification", "cache": str(cfg.cache)},
                             num_classes=int(meta["num_classes"]), kl_weight=cfg.kl_weight,
                             temperature=cfg.temperature, **cfg.architecture())
    steps = -(-int(meta["num_samples"]) * int(meta["augmentation"]["views"]) // cfg.batch_size)
    trackers = Trackers(parse_report_to(cfg.report_to), out, out.name, config_lib.to_dict(cfg), cfg.wandb_project_name)
    epochs_done = [0]

    def log_accuracies(epoch: int, stage: list) -> None:
        epochs_done[0] += 1
        trackers.log_val({f"image/R={rdm.rate_weight:g}": {"acc1": held_out_accuracy(rdm, held)} for _, rdm in stage},
                         epochs_done[0] * steps, epochs_done[0])

    def report_step(step: int, terms: dict) -> None:
        if terms and (step % 50 == 0 or step == 1):
            trackers.log_train({"step": step, "loss": float(sum(float(v) for v in terms.values())),
                                **{k: float(v) for k, v in terms.items()}})

    try:
        stats = train_family(family, lambda epoch: iter_cached_outputs(cfg.cache, batch_size=cfg.batch_size,
                                                                       seed=cfg.seed, epoch=epoch),
                             epochs=cfg.epochs, lr=cfg.lr, steps_per_epoch=steps,
                             holdout_fraction=cfg.holdout_fraction, density_lr_factor=cfg.density_lr_factor,
                             continuation=cfg.rate_continuation, score=lambda rdm: held_out_objective(rdm, held),
                             on_epoch=log_accuracies if trackers.names else None, log_every=0,
                             on_step=report_step if trackers.names else None)
    finally:
        trackers.close()
    save_and_report(cfg, out, family, held, stats)
    return 0
