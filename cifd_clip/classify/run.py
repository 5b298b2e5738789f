"""What `cls-train` and `cls-distill` do around the shared training loop: data, models, evaluation."""
from __future__ import annotations

import logging
from typing import Optional

from ..errors import UserError
from .data import ClassificationSet, open_set, recipe_for
from .evaluate import evaluate_classifier
from .loader import ClassificationStream, Views
from .models import LoadedClassifier, load_classifier

log = logging.getLogger(__name__)


def open_splits(cfg) -> tuple[ClassificationSet, Optional[ClassificationSet]]:
    train = open_set(cfg.train_data, "train")
    val = None
    if cfg.val_data:
        val = open_set(cfg.val_data, "val")
    elif not cfg.train_data.startswith("wds:"):
        val = open_set(cfg.train_data, "val")
    if val is not None and val.num_classes != train.num_classes and not cfg.train_data.startswith("wds:"):
        raise UserError(f"the val data has {val.num_classes} classes but the training data {train.num_classes}")
    return train, val


def make_stream(cfg, train: ClassificationSet, env, *, teacher_recipe=None):
    """The training stream; its DataLoader pins batches when --pin-memory resolves to on for the run's device and
    keeps its workers per --persistent-workers."""
    from ..engine import precision

    recipe = recipe_for(train.kind, cfg.image_size)
    views = Views(train, recipe, train=True, seed=cfg.seed, teacher_recipe=teacher_recipe)
    return ClassificationStream(views, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=env.rank,
                                world_size=env.world_size, pin_memory=precision.resolve_pin_memory(cfg, env.device),
                                persistent_workers=cfg.persistent_workers)


def describe(loaded: LoadedClassifier, cfg, train: ClassificationSet) -> dict:
    from .. import config as config_lib

    recipe = recipe_for(train.kind, cfg.image_size)
    return {"model_name": loaded.name, "model_cfg": loaded.model_cfg(recipe.image_size, recipe.kind),
            "preprocess_cfg": {"mean": list(recipe.mean), "std": list(recipe.std), "image_size": recipe.image_size,
                               "kind": recipe.kind},
            "config": config_lib.to_dict(cfg)}


def make_evaluator(cfg, val: Optional[ClassificationSet], env):
    if not cfg.eval_every_epochs or val is None:
        return None
    recipe = recipe_for(val.kind, cfg.image_size)

    def evaluate(student, epoch: int) -> dict:
        metrics = evaluate_classifier(student, Views(val, recipe, train=False), batch_size=max(cfg.batch_size, 64),
                                      device=env.device)
        log.info("epoch %d val: top-1 %.2f%%, top-5 %s", epoch, 100 * metrics["acc1"],
                 "-" if metrics["acc5"] is None else f"{100 * metrics['acc5']:.2f}%")
        return {"val": {"metrics": metrics}}

    return evaluate


def load_student(cfg, train: ClassificationSet) -> LoadedClassifier:
    loaded = load_classifier(cfg.model, cfg.pretrained, num_classes=train.num_classes)
    if loaded.num_classes != train.num_classes:
        raise UserError(f"--model {cfg.model} predicts {loaded.num_classes} classes but the data has "
                        f"{train.num_classes}")
    return loaded


def cost_summary(cost: dict, cfg, data) -> dict:
    """summary.json's cost: MACs per training sample and for the whole run."""
    return {"macs_per_sample": cost, "macs_total": cost["total"] * cfg.epochs * data.num_batches * cfg.batch_size}


def training_plan(cfg, module, cost: dict, student: LoadedClassifier, train: ClassificationSet,
                  val: Optional[ClassificationSet], data, env):
    """What session.run_training runs, or None after printing the cost projection for --dry-run."""
    from ..engine import session
    from .cost import projection

    if cfg.dry_run:
        print(projection(cost, len(train), cfg.epochs))
        return None
    return session.TrainingSetup(module, data, describe(student, cfg, train), make_evaluator(cfg, val, env),
                                cost_summary(cost, cfg, data))
