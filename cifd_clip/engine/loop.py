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

Each epoch's batch iterator is run to its end, so the loader's epoch-end work happens: its summary of
skipped bad samples reaches the log and its bad-fraction limit is enforced (a DataError stops the run).

GPU speed settings (`precision.resolve_speed_settings`, logged in one line when training starts and kept in
summary.json) are applied here, so every training stage gets them: TF32, the fused optimizer, channels_last
for a convolutional student and its images, in-place torch.compile of the student's towers (checkpoints are
written from the uncompiled module tree, so they carry no `_orig_mod.` prefix), open_clip's gradient
checkpointing. Pinned loader memory is the stage's loader's own (session.build_loader and the classification
stream pass `precision.resolve_pin_memory`'s answer when they build their DataLoader); the loop copies batches
to the GPU without blocking when the loader pins them. A step waits for the GPU once, for all its loss terms
together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import config as config_lib
from ..errors import DataError, UserError
from ..output_checks import check_free_space
from . import checkpoint as ckpt_lib
from .distributed import DistEnv, all_reduce_max, barrier
from .precision import SpeedSettings, autocast, lower_weights, resolve_speed_settings, set_tf32
from .progress import Progress
from .retention import Retention, peak_checkpoints, save_counts
from .trackers import Trackers, parse_report_to
from .schedule import make_optimizer, make_schedule, set_fused

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The loss or the gradient became NaN/inf; the run stops before anything is saved."""


def seed_everything(seed: int, rank: int = 0, step: int = 0) -> None:
    mixed = (seed * 1_000_003 + rank * 7_919 + step) % (2 ** 31)
    torch.manual_seed(mixed)
    np.random.seed(mixed)
    random.seed(mixed)


def to_device(batch: dict, device: torch.device, channels_last: bool = False, non_blocking: bool = True) -> dict:
    """Tensors to the device; `non_blocking` overlaps the copy with the GPU's work when the loader pinned the batch
    (--pin-memory; the trainer passes whether it did). With channels_last, image batches (4-d) are converted on the
    device, after the copy."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=non_blocking)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def apply_speed_settings(module: nn.Module, speed: SpeedSettings, device: torch.device) -> list[str]:
    """Set up the module (already on `device`) for the run's speed settings; returns the compiled modules' names."""
    from ..clip_models import compile_towers, set_grad_checkpointing

    student = getattr(module, "student", module)
    if speed.tf32:
        set_tf32(True)
    elif device.type == "cuda":
        set_tf32(False)
    if speed.grad_checkpointing:
        set_grad_checkpointing(student, True)
    if speed.channels_last:
        module.to(memory_format=torch.channels_last)  # conv weights of the student (and of an online teacher)
    return compile_towers(student) if speed.torchcompile else []


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around the module when there is more than one process."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


class MetricsLog:
    """metrics.jsonl and the trackers of --report-to (trackers.py), written by the main process only."""

    def __init__(self, run_dir: Path, enabled: bool, trackers: Optional[Trackers] = None):
        self.enabled = enabled
        self.file = None
        self.trackers = trackers if enabled else None
        if not enabled:
            return
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        if self.trackers is not None and "step" in record:
            if "eval" in record:
                self.trackers.log_val(record["eval"], int(record["step"]), record.get("epoch"))
            else:
                self.trackers.log_train(record)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.trackers is not None:
            self.trackers.close()


def _first_bad_term(terms: dict) -> Optional[str]:
    """The first named term that is NaN/inf (the total `loss` only if no single term is)."""
    for name, value in terms.items():
        if name != "loss" and not math.isfinite(value):
            return name
    return "loss" if not math.isfinite(terms.get("loss", 0.0)) else None


def _seed_loader(data, seed: int, rank: int, epoch: int) -> None:
    """Give the DataLoader its own generator: starting its iterator then draws the worker seeds from
    (seed, rank, epoch) instead of the global RNG, which would shift every later draw after a resume. (Persistent
    workers draw their seeds once, at their first epoch; the stream re-seeds every sample itself, so the batches do
    not depend on them.)"""
    loader = getattr(data, "dataloader", None)
    if loader is not None:
        loader.generator = torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + epoch) % (2 ** 63))


def _as_the_loader_pins(speed: SpeedSettings, data, device: torch.device) -> SpeedSettings:
    """The run's pin_memory is what the stage's DataLoader does (built with `precision.resolve_pin_memory`'s
    answer): the loop copies batches without blocking only from pinned memory."""
    loader = getattr(data, "dataloader", None)
    if loader is None or not hasattr(loader, "pin_memory"):
        return speed
    return dataclasses.replace(speed, pin_memory=device.type == "cuda" and bool(loader.pin_memory))


def _check_resume_fits(ckpt: dict, steps_per_epoch: int, world_size: int, path) -> None:
    saved = ckpt.get("steps_per_epoch")
    if saved is not None and int(saved) != steps_per_epoch:
        raise UserError(f"cannot resume from {path}: it was written with {saved} steps per epoch and this run has "
                        f"{steps_per_epoch} (batch size, accum-freq, processes or samples per epoch changed)")
    saved_world = ckpt.get("world_size")
    if saved_world is not None and int(saved_world) != world_size:
        log.warning("resuming a run written by %s processes with %s: the data order will differ", saved_world,
                    world_size)


class Trainer:
    """The state of one training run and its named steps; `fit` below strings them together."""

    def __init__(self, module: nn.Module, data, cfg, env: DistEnv, run_dir: Path, describe: dict,
                 evaluate: Optional[Callable[[nn.Module, int], dict]], find_unused_parameters: bool,
                 summary_extra: Optional[dict] = None):
        self.module, self.data, self.cfg, self.env = module, data, cfg, env
        self.run_dir, self.describe, self.evaluate = Path(run_dir), describe, evaluate
        self.device = env.device
        from ..clip_models import has_grad_checkpointing, is_convolutional
        student = getattr(module, "student", module)
        self.speed = resolve_speed_settings(cfg, self.device, convolutional=is_convolutional(student),
                                            grad_checkpointing_ok=has_grad_checkpointing(student))
        self.speed = _as_the_loader_pins(self.speed, data, self.device)
        self.precision = self.speed.precision
        self.accum = cfg.accum_freq
        self.steps_per_epoch = int(data.num_batches) // self.accum
        if self.steps_per_epoch < 1:
            raise DataError(f"an epoch has {data.num_batches} batches per process, fewer than --accum-freq "
                            f"{self.accum}: lower --batch-size or --accum-freq, or use more data")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        module.to(self.device)
        lower_weights(getattr(module, "student", module), self.precision)  # before the optimizer sees them
        self.compiled = apply_speed_settings(module, self.speed, self.device)
        self.optimizer = make_optimizer(module, cfg.lr, cfg.wd, cfg.beta1, cfg.beta2, cfg.eps, cfg.optimizer,
                                        cfg.momentum, fused=self.speed.fused_optimizer)
        self.scheduler = make_schedule(self.optimizer, cfg, self.total_steps, self.steps_per_epoch)
        self.scaler = (torch.amp.GradScaler("cuda") if self.precision == "amp" and self.device.type == "cuda"
                       else None)
        self.step = 0
        self.steps_this_run, self.skipped = 0, 0
        self.last_terms: dict = {}
        self.eval_results: dict = {}
        self.last_saved: Optional[Path] = None
        self.stopped_early = False
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.global_batch = cfg.batch_size * env.world_size * self.accum
        self.find_unused_parameters = find_unused_parameters
        self.summary_extra = dict(summary_extra or {})

    # ---------------------------------------------------------------- set-up

    def resume(self) -> None:
        path = ckpt_lib.resolve_resume(self.cfg.resume, self.run_dir, self.steps_per_epoch)
        if path is None:
            if self.cfg.resume == "latest" and self.env.is_main:
                log.info("--resume latest: no checkpoint in %s yet, starting from scratch", self.run_dir / "checkpoints")
            return
        ckpt = ckpt_lib.load_for_resume(path)
        _check_resume_fits(ckpt, self.steps_per_epoch, self.env.world_size, path)
        self.module.load_states(ckpt["state_dict"], ckpt.get("distill_state_dict", {}))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_fused(self.optimizer, self.speed.fused_optimizer)  # this run's setting, not the checkpoint's
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        ckpt_lib.set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        if self.env.is_main:
            log.info("resuming from %s at step %d of %d", path, self.step, self.total_steps)

    def checkpoint(self, epochs_done: int) -> dict:
        return ckpt_lib.build_checkpoint(
            epoch=epochs_done, step=self.step, name=self.run_dir.name, model_name=self.describe["model_name"],
            model_cfg=self.describe["model_cfg"], preprocess_cfg=self.describe["preprocess_cfg"],
            state_dict=self.module.student_state_dict(), distill_state_dict=self.module.distill_state_dict(),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            config=self.describe.get("config", {}),
            extra={"steps_per_epoch": self.steps_per_epoch, "world_size": self.env.world_size})

    # ---------------------------------------------------------------- one optimizer step

    def forward_backward(self, model: nn.Module, batches, epoch: int, local_step: int) -> dict:
        """Run the step's micro-batches; returns the terms averaged over them (plus their sum, `loss`)."""
        values: list[tuple[str, torch.Tensor]] = []
        for micro in range(self.accum):
            try:
                batch = next(batches)
            except StopIteration:
                raise DataError(f"the data ran out after {local_step * self.accum + micro} batches of epoch "
                                f"{epoch}, but {self.data.num_batches} were expected") from None
            batch = to_device(batch, self.device, self.speed.channels_last, non_blocking=self.speed.pin_memory)
            last = micro == self.accum - 1
            sync = model.no_sync() if self.env.distributed and not last else contextlib.nullcontext()
            with sync:
                with autocast(self.precision, self.device):
                    terms = model(batch)
                loss = sum(terms.values()) / self.accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            values += [(name, v.detach().float().reshape(()) if isinstance(v, torch.Tensor)
                        else torch.tensor(float(v), device=self.device)) for name, v in terms.items()]
        # one wait for the GPU per step, for every term of every micro-batch
        numbers = torch.stack([v.to(self.device) for _, v in values]).tolist() if values else []
        sums: dict[str, float] = {}
        for (name, _), number in zip(values, numbers):
            sums[name] = sums.get(name, 0.0) + number / self.accum
        return {"loss": sum(sums.values()), **sums}

    def apply_update(self, terms: dict, epoch: int) -> float:
        """Clip, check for NaN/inf on every rank, then step the optimizer (or skip / stop). Returns the grad norm."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.grad_clip_norm if self.cfg.grad_clip_norm else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        bad = _first_bad_term(terms) or (None if math.isfinite(grad_norm) or self.scaler is not None else "grad_norm")
        if all_reduce_max(self.env, 1.0 if bad else 0.0) > 0:
            where = f"term '{bad}'" if bad else "a term on another process"
            if not self.cfg.skip_nonfinite:
                raise NonFiniteLoss(f"the loss became NaN/inf at step {self.step} (epoch {epoch}) in {where}; lower "
                                    f"--lr, set --grad-clip-norm, or pass --skip-nonfinite")
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.metrics.write({"step": self.step, "epoch": epoch, "skipped_nonfinite": where})
            log.warning("skipping step %d: non-finite %s", self.step, where)
            return grad_norm
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if hasattr(self.module, "post_step"):
            self.module.post_step()
        return grad_norm

    def train_step(self, model: nn.Module, batches, epoch: int, local_step: int) -> None:
        seed_everything(self.cfg.seed, self.env.rank, self.step)
        if hasattr(self.module, "begin_step"):
            self.module.begin_step(self.step, self.total_steps)
        lr = self.scheduler.step(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        started = time.time()
        terms = self.forward_backward(model, batches, epoch, local_step)
        grad_norm = self.apply_update(terms, epoch)
        self.step += 1
        self.steps_this_run += 1
        self.last_terms = terms
        samples_per_s = self.global_batch / max(time.time() - started, 1e-9)
        if self.env.is_main and (self.step % self.cfg.log_every_steps == 0 or self.step == self.total_steps):
            self.metrics.write({"step": self.step, "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
                                "samples_per_s": samples_per_s, **terms})
        self.progress.update(self.step, loss=terms["loss"], samples_per_s=samples_per_s)

    # ---------------------------------------------------------------- epochs

    def end_epoch(self, batches, epoch: int, stop: bool = False) -> None:
        """Finish the loader's epoch (its bad-sample report and limit), save (every --save-every-epochs, at the
        run's end and where it stops; else a step checkpoint when --save-every-steps falls here), and evaluate when
        asked."""
        for _ in batches:  # batches that --accum-freq leaves over; the loader's epoch-end code runs after them
            pass
        done, every_epochs = epoch + 1, getattr(self.cfg, "save_every_epochs", 1)
        if self.env.is_main:
            if stop or done == self.cfg.epochs or (every_epochs and done % every_epochs == 0):
                self.last_saved = self.writer.save_epoch(self.checkpoint(done))
            elif self.cfg.save_every_steps and self.step % self.cfg.save_every_steps == 0:
                self.last_saved = self.writer.save_step(self.checkpoint(epoch + 1))
        every = self.cfg.eval_every_epochs
        if self.evaluate is not None and every and (epoch + 1) % every == 0:
            if self.env.is_main:
                self.module.eval()
                self.eval_results = self.evaluate(self.module.student, epoch + 1)
                self.module.train()
                self.metrics.write({"step": self.step, "epoch": epoch + 1, "eval": self.eval_results})
            barrier(self.env)

    def train_epoch(self, model: nn.Module, epoch: int, local_step: int) -> None:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        _seed_loader(self.data, self.cfg.seed, self.env.rank, epoch)
        batches = iter(self.data.iterate(epoch, skip_batches=local_step * self.accum))
        stop_after = self.cfg.stop_after_steps
        while local_step < self.steps_per_epoch:
            self.train_step(model, batches, epoch, local_step)
            local_step += 1
            stop = stop_after is not None and stop_after <= self.step < self.total_steps
            every = self.cfg.save_every_steps
            if local_step == self.steps_per_epoch:
                self.end_epoch(batches, epoch, stop=stop)
            elif (stop or (every and self.step % every == 0)) and self.env.is_main:
                self.last_saved = self.writer.save_step(self.checkpoint(epoch))
            if stop:
                self.stopped_early = True
                return

    def check_disk_space(self) -> None:
        """The checkpoints this invocation will hold on disk at once, under the run's retention, fit (weights plus
        AdamW's two moments each)."""
        per_checkpoint = 3 * sum(t.numel() * t.element_size() for t in self.module.state_dict().values())
        end = self.total_steps  # the last step this invocation reaches: --stop-after-steps ends it earlier
        if self.cfg.stop_after_steps is not None:
            end = min(end, max(self.step, self.cfg.stop_after_steps))
        retention = Retention.of(self.cfg)
        epochs, steps = save_counts(self.step, end, self.total_steps, self.steps_per_epoch, self.cfg.save_every_steps,
                                    getattr(self.cfg, "save_every_epochs", 1))
        count = peak_checkpoints(epochs, steps, retention)
        check_free_space(self.run_dir, per_checkpoint * count,
                         f"the run's checkpoints ({count} on disk at once of the {epochs + steps} it writes, keeping "
                         f"{retention.describe()})",
                         hint="" if retention.delete_previous_checkpoint else
                         "pass --delete-previous-checkpoint or a lower --keep-step-checkpoints, or free some space")

    def run(self) -> dict:
        self.resume()
        trackers = None
        if self.env.is_main:
            self.check_disk_space()
            # before config.yaml: a tracker that cannot start (wandb not logged in) leaves no trace of the run
            trackers = Trackers(parse_report_to(getattr(self.cfg, "report_to", "none")), self.run_dir,
                                self.run_dir.name, self.describe.get("config", {}),
                                getattr(self.cfg, "wandb_project_name", "cifd-clip"), resume=self.step > 0)
            # only now: a refused resume leaves the run's config.yaml as it was
            config_lib.save(self.cfg, self.run_dir / "config.yaml")
        model = wrap_ddp(self.module, self.env, self.find_unused_parameters)
        self.writer = ckpt_lib.CheckpointWriter(self.run_dir, self.steps_per_epoch, Retention.of(self.cfg))
        self.metrics = MetricsLog(self.run_dir, self.env.is_main, trackers)
        self.progress = Progress(self.total_steps, self.step, enabled=self.env.is_main)
        if self.env.is_main:
            log.info("%s%s", self.speed.describe(self.cfg.optimizer),
                     f" ({', '.join(self.compiled)} compiled: the first steps are slow)" if self.compiled else "")
        started = time.time()
        self.module.train()
        try:
            while self.step < self.total_steps and not self.stopped_early:
                epoch, local_step = divmod(self.step, self.steps_per_epoch)
                self.train_epoch(model, epoch, local_step)
        finally:
            self.progress.close()
            self.metrics.close()
        barrier(self.env)
        return self.summary(time.time() - started)

    def summary(self, wall: float) -> dict:
        summary = {
            "steps": self.step, "total_steps": self.total_steps, "steps_this_run": self.steps_this_run,
            "epochs": self.cfg.epochs, "stopped_early": self.stopped_early,
            "skipped_nonfinite_steps": self.skipped, "final_metrics": self.last_terms, "eval": self.eval_results,
            "wall_time_s": wall,
            "samples_per_s": self.steps_this_run * self.global_batch / wall if wall > 0 else 0.0,
            "bad_samples": _bad_samples(self.data),
            "last_checkpoint": str(self.last_saved) if self.last_saved else None,
            "precision": self.precision, "speed_settings": self.speed.to_dict(), "world_size": self.env.world_size,
            **self.summary_extra,
        }
        if self.env.is_main and self.steps_this_run == 0 and (self.run_dir / "summary.json").is_file():
            log.info("the run in %s had already finished; its summary.json is kept", self.run_dir)
        elif self.env.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(ckpt_lib.to_plain(summary), indent=2))
        return summary


def fit(module: nn.Module, data, cfg, env: DistEnv, run_dir: Path, *, describe: dict,
        evaluate: Optional[Callable[[nn.Module, int], dict]] = None, find_unused_parameters: bool = False,
        summary_extra: Optional[dict] = None) -> dict:
    """Train `module` on `data` (a DataInfo with num_batches and iterate(epoch, skip_batches)).

    `describe` carries model_name/model_cfg/preprocess_cfg for the checkpoints; `evaluate(student, epoch)`
    runs on the main process every --eval-every-epochs; `summary_extra` joins summary.json (e.g. the run's
    cost). Returns the summary also written to summary.json.
    """
    return Trainer(module, data, cfg, env, run_dir, describe, evaluate, find_unused_parameters, summary_extra).run()


def _bad_samples(data) -> dict:
    report = getattr(data, "bad_report", None)
    return ckpt_lib.to_plain(report()) if callable(report) else {}
