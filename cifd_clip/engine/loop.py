"""The one training loop shared by `cifd-clip train` and `cifd-clip distill`.

The loop drives a module whose `forward(batch)` returns a dict of named, already weighted
loss terms; their sum is the loss. The module (a `Distiller`) is what DDP wraps and what is
checkpointed: `student_state_dict()` → `state_dict`, `distill_state_dict()` → the rest.

Gradient accumulation sums `loss / accum_freq` over micro-batches. Per-sample terms (CIFD
feature distances, IBM rates, FD) then equal their full-batch value; the contrastive term
sees only the negatives of its own micro-batch (open_clip instead re-embeds the whole batch,
which does not combine with distillation targets).

Randomness inside a step (IBM noise, KD dropout, augmentation in the main process) is
re-seeded from (seed, rank, step) before each step, as fairseq does, so a resumed run draws
exactly what the uninterrupted run drew.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import DataError, UserError
from . import checkpoint as ckpt_lib
from .distributed import DistEnv, all_reduce_max, barrier
from .precision import autocast, resolve_precision
from .schedule import WarmupCosine, make_optimizer

log = logging.getLogger(__name__)

POISON_ENV = "CIFD_CLIP_POISON_STEP"  # debug/test hook: make the loss NaN at this optimizer step


class NonFiniteLoss(UserError):
    """The loss or the gradient became NaN/inf; the run stops before anything is saved."""


def seed_everything(seed: int, rank: int = 0, step: int = 0) -> None:
    mixed = (seed * 1_000_003 + rank * 7_919 + step) % (2 ** 31)
    torch.manual_seed(mixed)
    np.random.seed(mixed)
    random.seed(mixed)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around the module when there is more than one process."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when installed), written by the main process only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _first_bad_term(terms: dict) -> Optional[str]:
    """The first named term that is NaN/inf (the total `loss` only if no single term is)."""
    for name, value in terms.items():
        if name != "loss" and not math.isfinite(value):
            return name
    return "loss" if not math.isfinite(terms.get("loss", 0.0)) else None


def _seed_loader(data, seed: int, rank: int, epoch: int) -> None:
    """Give the DataLoader its own generator: starting its iterator then draws the worker seeds from
    (seed, rank, epoch) instead of the global RNG, which would shift every later draw after a resume."""
    loader = getattr(data, "dataloader", None)
    if loader is not None:
        loader.generator = torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + epoch) % (2 ** 63))


def _check_resume_fits(ckpt: dict, steps_per_epoch: int, world_size: int, path) -> None:
    saved = ckpt.get("steps_per_epoch")
    if saved is not None and int(saved) != steps_per_epoch:
        raise UserError(f"cannot resume from {path}: it was written with {saved} steps per epoch and this run has "
                        f"{steps_per_epoch} (batch size, accum-freq, processes or samples per epoch changed)")
    saved_world = ckpt.get("world_size")
    if saved_world is not None and int(saved_world) != world_size:
        log.warning("resuming a run written by %s processes with %s: the data order will differ", saved_world,
                    world_size)


def fit(module: nn.Module, data, cfg, env: DistEnv, run_dir: Path, *, describe: dict,
        evaluate: Optional[Callable[[nn.Module, int], dict]] = None, find_unused_parameters: bool = False) -> dict:
    """Train `module` on `data` (a DataInfo with num_batches and iterate(epoch, skip_batches)).

    `describe` carries model_name/model_cfg/preprocess_cfg for the checkpoints; `evaluate(student, epoch)`
    runs on the main process every --eval-every-epochs. Returns the summary also written to summary.json.
    """
    run_dir = Path(run_dir)
    device = env.device
    precision = resolve_precision(cfg.precision, device)
    accum = cfg.accum_freq
    steps_per_epoch = int(data.num_batches) // accum
    if steps_per_epoch < 1:
        raise DataError(f"an epoch has {data.num_batches} batches per process, fewer than --accum-freq {accum}: "
                        f"lower --batch-size or --accum-freq, or use more data")
    total_steps = steps_per_epoch * cfg.epochs
    module.to(device)
    optimizer = make_optimizer(module, cfg.lr, cfg.wd, cfg.beta1, cfg.beta2, cfg.eps)
    scheduler = WarmupCosine(optimizer, cfg.warmup_steps(total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if precision == "amp" and device.type == "cuda" else None

    step = 0
    resume_path = ckpt_lib.resolve_resume(cfg.resume, run_dir)
    if resume_path is not None:
        ckpt = ckpt_lib.load_for_resume(resume_path)
        _check_resume_fits(ckpt, steps_per_epoch, env.world_size, resume_path)
        module.load_states(ckpt["state_dict"], ckpt.get("distill_state_dict", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        ckpt_lib.set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        if env.is_main:
            log.info("resuming from %s at step %d of %d", resume_path, step, total_steps)
    elif cfg.resume == "latest" and env.is_main:
        log.info("--resume latest: no checkpoint in %s yet, starting from scratch", run_dir / "checkpoints")

    model = wrap_ddp(module, env, find_unused_parameters)
    writer = ckpt_lib.CheckpointWriter(run_dir)
    metrics = MetricsLog(run_dir, env.is_main)
    poison_step = int(os.environ.get(POISON_ENV, "-1") or -1)
    global_batch = cfg.batch_size * env.world_size * accum
    params = [p for p in module.parameters() if p.requires_grad]

    def checkpoint(epochs_done: int) -> dict:
        return ckpt_lib.build_checkpoint(
            epoch=epochs_done, step=step, name=run_dir.name, model_name=describe["model_name"],
            model_cfg=describe["model_cfg"], preprocess_cfg=describe["preprocess_cfg"],
            state_dict=module.student_state_dict(), distill_state_dict=module.distill_state_dict(),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None, config=describe.get("config", {}),
            extra={"steps_per_epoch": steps_per_epoch, "world_size": env.world_size})

    from tqdm import tqdm
    progress = tqdm(total=total_steps, initial=step, disable=not env.is_main, unit="step", dynamic_ncols=True)
    started = time.time()
    steps_this_run, skipped, last_terms, eval_results = 0, 0, {}, {}
    stopped_early, last_saved = False, None
    module.train()
    try:
        while step < total_steps:
            epoch, local_step = divmod(step, steps_per_epoch)
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            _seed_loader(data, cfg.seed, env.rank, epoch)
            batches = iter(data.iterate(epoch, skip_batches=local_step * accum))
            while local_step < steps_per_epoch:
                seed_everything(cfg.seed, env.rank, step)
                if hasattr(module, "begin_step"):
                    module.begin_step(step)
                lr = scheduler.step(step)
                optimizer.zero_grad(set_to_none=True)
                t0 = time.time()
                sums: dict[str, float] = {}
                for micro in range(accum):
                    try:
                        batch = next(batches)
                    except StopIteration:
                        raise DataError(f"the data ran out after {local_step * accum + micro} batches of epoch "
                                        f"{epoch}, but {data.num_batches} were expected") from None
                    batch = to_device(batch, device)
                    sync = model.no_sync() if env.distributed and micro < accum - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast(precision, device):
                            terms = model(batch)
                        if step == poison_step and micro == 0:
                            first = next(iter(terms))
                            terms = {**terms, first: terms[first] * float("nan")}
                        loss = sum(terms.values())
                        scaled = loss / accum
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    for name, value in terms.items():
                        sums[name] = sums.get(name, 0.0) + float(value.detach()) / accum
                sums = {"loss": sum(sums.values()), **sums}
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    params, cfg.grad_clip_norm if cfg.grad_clip_norm else float("inf")))
                bad = _first_bad_term(sums) or (None if math.isfinite(grad_norm) or scaler is not None
                                                else "grad_norm")
                if all_reduce_max(env, 1.0 if bad else 0.0) > 0:
                    where = f"term '{bad}'" if bad else "a term on another process"
                    if not cfg.skip_nonfinite:
                        raise NonFiniteLoss(f"the loss became NaN/inf at step {step} (epoch {epoch}) in {where}; "
                                            f"lower --lr, set --grad-clip-norm, or pass --skip-nonfinite")
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    metrics.write({"step": step, "epoch": epoch, "skipped_nonfinite": where})
                    log.warning("skipping step %d: non-finite %s", step, where)
                else:
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if hasattr(module, "post_step"):
                        module.post_step()
                step += 1
                local_step += 1
                steps_this_run += 1
                last_terms = sums
                dt = max(time.time() - t0, 1e-9)
                if env.is_main and (step % cfg.log_every_steps == 0 or step == total_steps):
                    metrics.write({"step": step, "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
                                   "samples_per_s": global_batch / dt, **sums})
                progress.update(1)
                progress.set_postfix(loss=f"{sums['loss']:.4g}", samples_s=f"{global_batch / dt:.1f}")
                finished_epoch = local_step == steps_per_epoch
                stop_now = cfg.stop_after_steps is not None and step >= cfg.stop_after_steps and step < total_steps
                if finished_epoch:
                    if env.is_main:
                        last_saved = writer.save_epoch(checkpoint(epoch + 1))
                    if evaluate is not None and cfg.eval_every_epochs and (epoch + 1) % cfg.eval_every_epochs == 0:
                        if env.is_main:
                            module.eval()
                            eval_results = evaluate(module.student, epoch + 1)
                            module.train()
                            metrics.write({"step": step, "epoch": epoch + 1, "eval": eval_results})
                        barrier(env)
                elif (cfg.save_every_steps and step % cfg.save_every_steps == 0) or stop_now:
                    if env.is_main:
                        last_saved = writer.save_step(checkpoint(epoch))
                if stop_now:
                    stopped_early = True
                    break
            if stopped_early:
                break
    finally:
        progress.close()
        metrics.close()
    barrier(env)
    wall = time.time() - started
    summary = {
        "steps": step, "total_steps": total_steps, "steps_this_run": steps_this_run, "epochs": cfg.epochs,
        "stopped_early": stopped_early, "skipped_nonfinite_steps": skipped, "final_metrics": last_terms,
        "eval": eval_results, "wall_time_s": wall,
        "samples_per_s": steps_this_run * global_batch / wall if wall > 0 else 0.0,
        "bad_samples": _bad_samples(data), "last_checkpoint": str(last_saved) if last_saved else None,
        "precision": precision, "world_size": env.world_size,
    }
    if env.is_main and steps_this_run == 0 and (run_dir / "summary.json").is_file():
        log.info("the run in %s had already finished; its summary.json is kept", run_dir)
    elif env.is_main:
        (run_dir / "summary.json").write_text(json.dumps(ckpt_lib.to_plain(summary), indent=2))
    return summary


def _bad_samples(data) -> dict:
    report = getattr(data, "bad_report", None)
    return ckpt_lib.to_plain(report()) if callable(report) else {}
