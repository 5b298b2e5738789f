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
    from ..classify import run as cls_run
    from ..classify.cost import training_macs
    from ..classify.distiller import ClassifierDistiller
    from ..classify.settings import ClassifySettings
    from ..engine import session
    from ..engine.loop import seed_everything

    def prepare(env, run_dir):
        train, val = cls_run.open_splits(cfg)
        seed_everything(cfg.seed)
        student = cls_run.load_student(cfg, train)
        data = cls_run.make_stream(cfg, train, env)
        module = ClassifierDistiller.build(student.net, ClassifySettings(loss="ce"), seed=cfg.seed)
        cost = training_macs(student.net, data.views.recipe.image_size)
        return cls_run.training_plan(cfg, module, cost, student, train, val, data, env)

    return session.run_training(cfg, prepare)
