"""What `train` and `distill` do before and after the loop: run folder, config, student, loader, eval."""
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
from ..files import remove_stale_temp_files
from ..outputs import check_folder_target, hold_run_lock
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


def start_run(cfg) -> tuple[DistEnv, Path]:
    """Join the process group, pick <logs>/<name>/ (refusing to overwrite a run or to share it with a run still
    going) and check the run's other inputs."""
    check_folder_target(cfg.logs, "--logs")
    check_eval_sets(cfg)
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


def eval_entries(cfg) -> list[tuple[str, str, Path]]:
    """(label, dataset name, root) of each --eval-datasets entry: `NAME=PATH` is any set `eval` reads (PATH relative
    to --eval-dataset-root when one is given); a bare `NAME` is the folder ROOT/NAME, read as that named set when
    NAME is one `eval` knows (imagenet1k, flickr30k, ...), else as a CLIP_benchmark webdataset set (wds/NAME)."""
    from ..evaluation.datasets import NAMED_SETS, canonical_name, default_task

    base = Path(cfg.eval_dataset_root).expanduser() if cfg.eval_dataset_root else None
    entries = []
    for entry in cfg.eval_datasets:
        label, _, where = entry.partition("=")
        if where:
            name, root = canonical_name(label), Path(where).expanduser()
            if not root.is_absolute():
                if base is None:
                    raise UserError(f"--eval-datasets {entry} names a relative path: give --eval-dataset-root or an "
                                    f"absolute path")
                root = base / root
        else:
            if base is None:
                raise UserError(f"--eval-datasets {entry} is a folder under --eval-dataset-root: give the root, or "
                                f"write NAME=PATH")
            name = canonical_name(label) if canonical_name(label) in NAMED_SETS else f"wds/{label}"
            root = base / label
        default_task(name)  # an unknown name is one sentence now, not after the first epoch
        entries.append((label, name, root))
    return entries


def check_eval_sets(cfg) -> None:
    """Every --eval-datasets set is on disk now, not found missing after the first epoch."""
    if not cfg.eval_every_epochs or not hasattr(cfg, "eval_datasets"):
        return
    if cfg.eval_dataset_root and not Path(cfg.eval_dataset_root).expanduser().is_dir():
        raise UserError(f"--eval-dataset-root {cfg.eval_dataset_root} is not a folder")
    for label, _, root in eval_entries(cfg):
        if not root.is_dir():
            raise UserError(f"eval dataset {label} is not a folder at {root} (--eval-datasets "
                            f"{' '.join(cfg.eval_datasets)}); fix the name or the root before training starts")


def describe(tower, cfg) -> dict:
    return {"model_name": tower.model_name, "model_cfg": tower.model_cfg, "preprocess_cfg": tower.preprocess_cfg,
            "config": config_lib.to_dict(cfg)}


def make_evaluator(cfg, tower, env: DistEnv) -> Optional[Callable]:
    """evaluate(student, epoch) -> {dataset: metrics} with the evaluation runner, or None when not asked for."""
    if not cfg.eval_every_epochs or not hasattr(cfg, "eval_datasets"):
        return None
    try:
        from ..evaluation.runner import evaluate_model_on_dataset
    except ImportError:
        raise UserError("--eval-every-epochs needs cifd_clip.evaluation.runner, which this install lacks") from None
    entries = eval_entries(cfg)

    def evaluate(student, epoch: int) -> dict:
        results = {}
        view = type(tower)(student, tower.preprocess_train, tower.preprocess_val, tower.tokenizer,
                           tower.model_name, tower.model_cfg, tower.preprocess_cfg, tower.spec, tower.extra)
        for label, name, root in entries:
            if not root.is_dir():
                raise UserError(f"eval dataset {label} is not a folder at {root}")
            # the set's own task (a webdataset set's dataset_type.txt says which)
            results[label] = evaluate_model_on_dataset(view, name, str(root), None, batch_size=cfg.batch_size,
                                                       workers=0, recall_k=cfg.recall_k, device=env.device,
                                                       show_progress=False)
            log.info("epoch %d eval %s: %s", epoch, label, results[label])
        return results

    return evaluate


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
class TrainingPlan:
    """What a training stage hands the loop: the module, its data, and how to describe and evaluate it."""

    module: object
    data: object
    describe: dict
    evaluate: Optional[Callable] = None
    summary_extra: dict = field(default_factory=dict)


def run_training(cfg, prepare: Callable[[DistEnv, Path], Optional[TrainingPlan]]) -> int:
    """Every training stage: start the run, `prepare` its plan (None: nothing to train, e.g. --dry-run), train
    (the loop saves config.yaml once a resume has been checked), and leave the process group whatever happens."""
    from .distributed import cleanup
    from .loop import fit

    env, run_dir = start_run(cfg)
    try:
        plan = prepare(env, run_dir)
        if plan is None:
            return 0
        summary = fit(plan.module, plan.data, cfg, env, run_dir, describe=plan.describe, evaluate=plan.evaluate,
                      find_unused_parameters=getattr(plan.module, "find_unused_parameters", False),
                      summary_extra=plan.summary_extra)
        if env.is_main:
            log.info("done: %d steps, %.1f samples/s, outputs in %s", summary["steps"], summary["samples_per_s"],
                     run_dir)
    finally:
        cleanup(env)
    return 0
