"""What every training stage does before and after the loop: run folder, config, loader, the loop, clean-up.
Evaluation during training is the stage's (`TrainingSetup.evaluate`; CLIP: evaluation/during_training.py)."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .. import config as config_lib
from ..errors import UserError
from ..file_io import remove_stale_temp_files
from ..output_checks import check_folder_target, hold_run_lock
from ..runlog import open_run_log
from .distributed import DistEnv, init_distributed

log = logging.getLogger(__name__)


def _broadcast_str(env: DistEnv, value: str) -> str:
    if not env.distributed:
        return value
    import torch.distributed as dist
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def default_run_name(model: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).stem if model.endswith((".json", ".pt")) else model)
    return f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{tag}"


def start_run(cfg, checks: Sequence[Callable] = ()) -> tuple[DistEnv, Path]:
    """Join the process group, pick <logs>/<name>/ (refusing to overwrite a run or to share it with a run still
    going) and check the run's other inputs (`checks`, each called with cfg before any process group exists)."""
    check_folder_target(cfg.logs, "--logs")
    for check in checks:
        check(cfg)
    env = init_distributed(cfg.device)
    name = _broadcast_str(env, cfg.name or default_run_name(cfg.model))
    cfg.name = name
    run_dir = Path(cfg.logs) / name
    if env.is_main:
        hold_run_lock(run_dir, "run folder")
        remove_stale_temp_files(run_dir / "checkpoints")  # left by a run killed while saving
    has_checkpoints = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.pt"))
    if has_checkpoints and not cfg.resume:
        raise UserError(f"run folder {run_dir} already holds checkpoints: pass --resume latest to continue it "
                        f"or choose another --name")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    every_rank = bool(getattr(cfg, "log_every_rank", False))
    if env.is_main or every_rank:
        open_run_log(run_dir, env.rank, env.world_size, every_rank)
    if env.is_main:
        if torch.get_num_threads() > 1 and env.device.type == "cpu" and env.world_size > 1:
            log.info("%d CPU threads per process", torch.get_num_threads())
    return env, run_dir


def describe(tower, cfg) -> dict:
    return {"model_name": tower.model_name, "model_cfg": tower.model_cfg, "preprocess_cfg": tower.preprocess_cfg,
            "config": config_lib.to_dict(cfg)}


def build_loader(cfg, tower, env: DistEnv, *, teacher=None, sample_stages: Sequence[Callable] = (),
                 preprocess: Optional[Callable] = None):
    """The training stream; `preprocess` replaces the student's random training transform (distillation
    passes its deterministic eval transform, so that the student sees the teacher's pixels). Its DataLoader pins
    batches when --pin-memory resolves to on for the run's device and keeps its workers per --persistent-workers."""
    from ..data.loader import make_train_loader
    from . import precision
    return make_train_loader(
        cfg.train_data, preprocess=preprocess or tower.preprocess_train, tokenizer=tower.tokenizer, batch_size=cfg.batch_size,
        workers=cfg.workers, seed=cfg.seed, rank=env.rank, world_size=env.world_size,
        num_samples=cfg.train_num_samples, resampled=cfg.dataset_resampled,
        teacher_preprocess=teacher.preprocess if teacher is not None else None,
        teacher_tokenizer=teacher.tokenizer if teacher is not None else None, sample_stages=sample_stages,
        max_bad_fraction=cfg.max_bad_fraction, pin_memory=precision.resolve_pin_memory(cfg, env.device),
        persistent_workers=cfg.persistent_workers)


def preflight(cfg, env: DistEnv, needed_keys: Sequence[str] = ()) -> None:
    """Check the shards can feed this job before any model is built (one sentence if not)."""
    from ..data.csv_source import resolve_csv_train_data
    from ..data.preflight import preflight as check_shards

    resolve_csv_train_data(cfg, env.world_size)
    check_shards(cfg.train_data, workers=cfg.workers, world_size=env.world_size, resampled=cfg.dataset_resampled,
                 needed_keys=needed_keys)


@dataclass
class TrainingSetup:
    """What a training stage hands the loop: the module, its data, and how to describe and evaluate it."""

    module: object
    data: object
    describe: dict
    evaluate: Optional[Callable] = None
    summary_extra: dict = field(default_factory=dict)


def run_training(cfg, prepare: Callable[[DistEnv, Path], Optional[TrainingSetup]],
                 checks: Sequence[Callable] = ()) -> int:
    """Every training stage: start the run (`checks`: its inputs, checked first), `prepare` its setup (None:
    nothing to train, e.g. --dry-run), train (the loop saves config.yaml once a resume has been checked), and
    leave the process group whatever happens."""
    from .distributed import cleanup
    from .loop import fit

    env, run_dir = start_run(cfg, checks)
    try:
        setup = prepare(env, run_dir)
        if setup is None:
            return 0
        summary = fit(setup.module, setup.data, cfg, env, run_dir, describe=setup.describe, evaluate=setup.evaluate,
                      find_unused_parameters=getattr(setup.module, "find_unused_parameters", False),
                      summary_extra=setup.summary_extra)
        if env.is_main:
            log.info("done: %d steps, %.1f samples/s, outputs in %s", summary["steps"], summary["samples_per_s"],
                     run_dir)
    finally:
        cleanup(env)
    return 0
