"""Train an image classifier with cross-entropy (a teacher, a teacher assistant, or the no-KD student).

The classification path of CIFD: CIFAR-100 (torchvision's pickle layout), ImageFolder or webdataset shards
with a `cls` member; the CIFAR zoo (resnet8x4, wrn_40_2, ...), the plain CNNs, torchvision/timm ImageNet models.
Same loop as the CLIP stages (resume, DDP, accumulation, NaN handling). See docs/classification.md.
Outputs: <logs>/<name>/{config.yaml, checkpoints/, metrics.jsonl, summary.json}.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..classify.options import ClassifyTrainOptions


@dataclass
class Config(ClassifyTrainOptions):
    pass


def run(cfg: Config) -> int:
    import logging

    from ..classify import run as cls_run
    from ..classify.cost import projection, training_macs
    from ..classify.distiller import ClassifierDistiller
    from ..classify.settings import ClassifySettings
    from ..engine import session
    from ..engine.distributed import cleanup
    from ..engine.loop import fit, seed_everything

    env, run_dir = session.start_run(cfg)
    try:
        train, val = cls_run.open_splits(cfg)
        seed_everything(cfg.seed)
        student = cls_run.load_student(cfg, train)
        data = cls_run.make_stream(cfg, train, env)
        module = ClassifierDistiller.build(student.net, ClassifySettings(loss="ce"), seed=cfg.seed)
        cost = training_macs(student.net, data.views.recipe.image_size)
        if cfg.dry_run:
            print(projection(cost, len(train), cfg.epochs))
            return 0
        session.save_config(cfg, run_dir, env)
        summary = fit(module, data, cfg, env, run_dir, describe=cls_run.describe(student, cfg, train),
                      evaluate=cls_run.make_evaluator(cfg, val, env),
                      summary_extra={"macs_per_sample": cost,
                                     "macs_total": cost["total"] * cfg.epochs * data.num_batches * cfg.batch_size})
        if env.is_main:
            logging.getLogger(__name__).info("done: %d steps, %.1f samples/s, outputs in %s", summary["steps"],
                                             summary["samples_per_s"], run_dir)
    finally:
        cleanup(env)
    return 0
