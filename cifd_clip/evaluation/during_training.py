"""A CLIP student evaluated during training (`--eval-every-epochs`, `--eval-datasets`): the sets are checked
before the run starts and scored with the same runner as `cifd-clip eval`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from .datasets import NAMED_SETS, canonical_name, default_task

log = logging.getLogger(__name__)


def eval_entries(cfg) -> list[tuple[str, str, Path]]:
    """(label, dataset name, root) of each --eval-datasets entry: `NAME=PATH` is any set `eval` reads (PATH relative
    to --eval-dataset-root when one is given); a bare `NAME` is the folder ROOT/NAME, read as that named set when
    NAME is one `eval` knows (imagenet1k, flickr30k, ...), else as a CLIP_benchmark webdataset set (wds/NAME)."""

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


def make_evaluator(cfg, tower, env) -> Optional[Callable]:
    """evaluate(student, epoch) -> {dataset: metrics} with the evaluation runner, or None when not asked for."""
    if not cfg.eval_every_epochs or not hasattr(cfg, "eval_datasets"):
        return None
    from .runner import evaluate_model_on_dataset

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
