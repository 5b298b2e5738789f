"""Distill a small open_clip student from a teacher with CIFD (or a baseline loss).

Targets come from the embedding cache (`--cache`, made by `cifd-clip embed`): no teacher
forward pass. `--teacher SPEC --teacher-online` computes them with the frozen teacher instead.
`--rdm FILE` (from `cifd-clip train-rdm`) adds the RDM "weak teacher" targets. Every loss term
has its own weight option; `--loss` picks CIFD or a baseline (open_clip's DistillClipLoss,
CLIP-KD's FD+ICL+CRD, TinyCLIP's affinity mimicking). See docs/training.md.
Outputs: <logs>/<name>/{config.yaml, checkpoints/, metrics.jsonl, summary.json}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option
from ..distill.settings import METHODS, LossSettings, method_reads
from ..engine.options import TrainingOptions
from ..errors import ConfigError


@dataclass
class Config(TrainingOptions, LossSettings):
    cache: Optional[str] = option(None, "embedding cache folder made by `cifd-clip embed` (targets without a teacher)")
    rdm: Optional[str] = option(None, "RDM checkpoint from `cifd-clip train-rdm` (CIFD's weak-teacher targets)")
    teacher: Optional[str] = option(None, "teacher model spec, used with --teacher-online (open_clip_train's "
                                          "--distill-model; here the default is the cache)",
                                    also=["distill_model"])
    teacher_pretrained: Optional[str] = option(None, "teacher weights file or tag, when --teacher names none "
                                                     "(open_clip_train's --distill-pretrained)",
                                               also=["distill_pretrained"])
    teacher_online: bool = option(False, "run the frozen teacher on every batch instead of reading the cache")
    cache_view: str = option("auto", "which cached image view a sample trains on: random (one of its K views, "
                                     "drawn per epoch), first (the plain image) or auto (random when the cache "
                                     "holds more than one view)", choices=["auto", "first", "random"])

    def validate(self) -> None:
        TrainingOptions.validate(self)
        LossSettings.validate(self)
        if self.teacher_online and not self.teacher:
            raise ConfigError("--teacher-online needs --teacher SPEC")
        if (self.teacher or self.teacher_pretrained) and not self.teacher_online:
            given = f"--teacher {self.teacher}" if self.teacher else f"--teacher-pretrained {self.teacher_pretrained}"
            raise ConfigError(f"{given} (open_clip_train's --distill-model/--distill-pretrained) is only used with "
                              f"--teacher-online, which runs the teacher on every batch: add --teacher-online, or "
                              f"drop it to train on the targets cached in --cache")
        if not self.teacher_online and not self.cache:
            raise ConfigError("give --cache DIR (cached teacher embeddings) or --teacher SPEC --teacher-online")
        if self.teacher_online and self.cache_view != "auto":
            raise ConfigError("--cache-view chooses among cached views; an online teacher sees the plain image")
        if self.rdm and not METHODS[self.loss].uses_rdms:
            raise ConfigError(f"--rdm is only used by the CIFD losses, not --loss {self.loss}")


def _dims_of(rdm) -> tuple[int, int]:
    return int(rdm.rdms("image")[0].config.input_dim), int(rdm.rdms("text")[0].config.input_dim)


def run(cfg: Config) -> int:
    import logging

    from ..data.embedding_cache import check_cache_compatible, read_cache_meta
    from ..distill.distiller import DEFAULT_TEACHER_LOGIT_SCALE, Distiller
    from ..distill.inputs import build_distill_loader
    from ..engine import session
    from ..evaluation import during_training
    from ..engine.loop import seed_everything
    from ..errors import UserError
    from ..core.rdm import RDMFamily
    from ..clip_models import load_model, load_teacher, weights_fingerprint

    log = logging.getLogger(__name__)

    def prepare(env, run_dir):
        session.preflight(cfg, env)
        meta = read_cache_meta(cfg.cache) if cfg.cache else None
        rdm = RDMFamily.load(cfg.rdm) if cfg.rdm else None
        if meta is not None and rdm is not None:
            img, txt = _dims_of(rdm)
            check_cache_compatible(meta, image_dim=img, text_dim=txt,
                                   teacher_fingerprint=rdm.meta.get("teacher_fingerprint"))
        teacher = None
        teacher_logit_scale = cfg.teacher_logit_scale
        if cfg.teacher_online:
            teacher = load_teacher(cfg.teacher, cfg.teacher_pretrained, device="cpu", cache_dir=cfg.cache_dir)
            fingerprint = weights_fingerprint(teacher.model)
            if meta is not None:
                check_cache_compatible(meta, teacher_fingerprint=fingerprint)
            if rdm is not None:
                rdm_fp = rdm.meta.get("teacher_fingerprint")
                if rdm_fp and rdm_fp != fingerprint:
                    raise UserError(f"the RDMs in {cfg.rdm} were trained on another teacher's embeddings "
                                    f"(fingerprint {rdm_fp}, this teacher {fingerprint})")
                if _dims_of(rdm) != (teacher.embed_dim, teacher.embed_dim):
                    raise UserError(f"the RDMs in {cfg.rdm} read {_dims_of(rdm)} wide embeddings but teacher "
                                    f"{cfg.teacher} has width {teacher.embed_dim}")
            teacher_dims = (teacher.embed_dim, teacher.embed_dim)
        else:
            teacher_dims = (int(meta["image_dim"]), int(meta["text_dim"]))
            if teacher_logit_scale is None:
                teacher_logit_scale = meta.get("teacher_logit_scale")
                if teacher_logit_scale is None and method_reads(cfg.loss, "teacher_logit_scale"):
                    teacher_logit_scale = DEFAULT_TEACHER_LOGIT_SCALE
                    log.warning("cache %s does not record the teacher's logit scale (made by an older cifd-clip): "
                                "using 100; pass --teacher-logit-scale or re-run embed", cfg.cache)
        if cfg.rdm is None and METHODS[cfg.loss].uses_rdms and env.is_main:
            log.info("no --rdm: CIFD runs with the teacher's feature term only")

        seed_everything(cfg.seed)  # same initial weights on every rank
        tower = load_model(cfg.model, cfg.pretrained, device="cpu", cache_dir=cfg.cache_dir)
        data = build_distill_loader(cfg, tower, env, teacher=teacher,
                                    cache_view=None if cfg.cache_view == "auto" else cfg.cache_view)
        module = Distiller.build(
            tower.model, cfg.loss_settings(), student_dim=tower.embed_dim, teacher_dims=teacher_dims, teacher=teacher,
            rdm=rdm, teacher_logit_scale=teacher_logit_scale, seed=cfg.seed, local_loss=cfg.local_loss,
            gather_with_grad=cfg.gather_with_grad, rank=env.rank, world_size=env.world_size)
        return session.TrainingSetup(module, data, session.describe(tower, cfg), during_training.make_evaluator(cfg, tower, env))

    return session.run_training(cfg, prepare, checks=[during_training.check_eval_sets])
