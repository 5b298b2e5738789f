"""Distill an image classifier: CIFD (RDMs + IBM), KD, TAKD, DGKD, AT, FT, CRD, DIST, NormKD, WSLD, IPWD, IFD or
MGD, in one loop.

The teacher runs on each batch's own view (`--teacher`), or its features and logits come from a cache made by
`cifd-clip cls-embed` (`--cache`, no teacher forward pass). `--rdm` (from `cls-train-rdm`) adds the RDMs'
targets to CIFD. TAKD: distill the assistant from the teacher, then the student from the assistant (its
checkpoint as --teacher); DGKD: --assistants A B with --kd-dropout 0.25. See docs/classification.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..classify.options import ClassifyTrainOptions
from ..classify.settings import ClassifySettings
from ..config import option
from ..errors import ConfigError


@dataclass
class Config(ClassifyTrainOptions, ClassifySettings):
    teacher: Optional[str] = option(None, "teacher classifier: a checkpoint of ours or NAME@FILE")
    assistants: list[str] = option([], "teacher assistants (DGKD): checkpoints whose KD terms join the teacher's")
    cache: Optional[str] = option(None, "teacher features and logits cached by `cifd-clip cls-embed` (no teacher "
                                        "forward pass)")
    rdm: Optional[str] = option(None, "RDM checkpoint from `cifd-clip cls-train-rdm` (CIFD's weak teachers)")

    def validate(self) -> None:
        ClassifyTrainOptions.validate(self)
        ClassifySettings.validate(self)
        if self.loss != "ce" and not (self.teacher or self.cache):
            raise ConfigError(f"--loss {self.loss} needs --teacher CHECKPOINT or --cache DIR")
        if self.rdm and self.loss != "cifd":
            raise ConfigError(f"--rdm is used by --loss cifd only, not {self.loss}")
        if self.cache and (self.teacher or self.assistants):
            raise ConfigError("give --teacher (online) or --cache (cached targets), not both")
        if self.cache and self.reads_feature_maps():
            raise ConfigError(f"--loss {self.loss} needs the teacher's feature maps: give --teacher, not --cache")


def run(cfg: Config) -> int:
    from ..classify import run as cls_run
    from ..classify.data import recipe_for
    from ..classify.cost import training_macs
    from ..classify.distiller import ClassifierDistiller, FrozenClassifier
    from ..classify.methods import RunContext
    from ..classify.models import load_classifier
    from ..engine import session
    from ..engine.loop import seed_everything
    from ..errors import UserError
    from ..core.rdm import RDMFamily

    def prepare(env, run_dir):
        train, val = cls_run.open_splits(cfg)
        seed_everything(cfg.seed)
        student = cls_run.load_student(cfg, train)
        teacher = assistants = None
        teacher_recipe, teacher_dim, cache = None, None, None
        if cfg.teacher:
            loaded = load_classifier(cfg.teacher)
            if loaded.num_classes != train.num_classes:
                raise UserError(f"teacher {cfg.teacher} predicts {loaded.num_classes} classes, the data has "
                                f"{train.num_classes}")
            teacher = FrozenClassifier(loaded.net)
            teacher_recipe = _recipe_of(cfg.teacher, train.kind)
            assistants = [FrozenClassifier(load_classifier(a).net) for a in cfg.assistants]
        elif cfg.cache:
            from ..classify.cache import ClassificationCache
            cache = ClassificationCache(cfg.cache, train)
            teacher_dim = cache.feature_dim
        rdm = RDMFamily.load(cfg.rdm) if cfg.rdm else None
        if rdm is not None:
            width = int(rdm.rdms("image")[0].config.input_dim)
            expected = teacher.net.feature_dim if teacher is not None else teacher_dim
            if width != expected:
                raise UserError(f"the RDMs in {cfg.rdm} read {width}-wide features but the teacher's are {expected}")
        data = cls_run.make_stream(cfg, train, env, teacher_recipe=teacher_recipe
                                   if teacher_recipe and teacher_recipe != recipe_for(train.kind, cfg.image_size)
                                   else None)
        if cache is not None:
            cache.attach(data.views, seed=cfg.seed)
        module = ClassifierDistiller.build(student.net, cfg.classify_settings(), teacher=teacher,
                                           assistants=assistants or (), rdm=rdm, teacher_dim=teacher_dim,
                                           seed=cfg.seed, train_labels=train.labels)
        cost = training_macs(student.net, data.views.recipe.image_size, teacher=teacher, assistants=assistants or (),
                             rdm=rdm, feature_dim=teacher.net.feature_dim if teacher is not None else teacher_dim)
        if not cfg.dry_run:  # IPWD's propensities, FT's paraphraser
            module.method.before_training(RunContext(module, data, cfg, env, run_dir))
        return cls_run.training_plan(cfg, module, cost, student, train, val, data, env)

    return session.run_training(cfg, prepare)


def _recipe_of(spec: str, kind: str):
    """The teacher's own resolution when its checkpoint records one (e.g. a 224-px teacher of a 160-px student)."""
    from ..classify.data import recipe_for
    from ..file_io import read_torch_file

    if spec.endswith((".pt", ".pth")) and "@" not in spec:
        cfg = read_torch_file(spec, "checkpoint file").get("model_cfg", {})
        return recipe_for(kind, cfg.get("image_size"))
    return recipe_for(kind)
