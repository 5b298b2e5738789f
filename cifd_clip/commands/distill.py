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
from ..engine.options import TrainingOptions
from ..errors import ConfigError


@dataclass
class Config(TrainingOptions):
    cache: Optional[str] = option(None, "embedding cache folder made by `cifd-clip embed` (targets without a teacher)")
    rdm: Optional[str] = option(None, "RDM checkpoint from `cifd-clip train-rdm` (CIFD's weak-teacher targets)")
    teacher: Optional[str] = option(None, "teacher model spec (needed with --teacher-online)")
    teacher_pretrained: Optional[str] = option(None, "teacher weights file or tag, when --teacher names none")
    teacher_online: bool = option(False, "run the frozen teacher on every batch instead of reading the cache")
    cache_view: str = option("first", "which cached augmented view to train on: first (plain image) or random",
                             choices=["first", "random"])
    loss: str = option("cifd", "cifd, or a baseline: distill_clip (open_clip), clipkd (FD+ICL+CRD), tinyclip",
                       choices=["cifd", "distill_clip", "clipkd", "tinyclip"])
    lambda_cl: float = option(0.005, "CIFD: weight of the contrastive term (paper 0.005; CLIP-KD used 0.0005)")
    teacher_weight: float = option(1.0, "CIFD: weight of the feature term against the teacher")
    rdm_weights: list[float] = option([], "CIFD: λ_n per RDM in rate order (default 1.0 each)")
    ibm: bool = option(True, "CIFD: information bottleneck on the student embeddings (--no-ibm: plain projection)")
    ibm_weight: float = option(1e-3, "CIFD: λ_I, weight of the IBM rate term (bits), both modalities")
    ibm_hidden_dim: Optional[int] = option(None, "CIFD: hidden width of a 2-layer IBM decoder (default: 1 layer)")
    kd_dropout: float = option(0.0, "CIFD: probability of dropping each teacher/RDM term per step (DGKD; CIFAR 0.25)")
    distortion: str = option("mse", "CIFD: feature distance, squared error summed over dims or smooth-L1",
                             choices=["mse", "smooth_l1"])
    contrastive_weight: float = option(1.0, "baselines: weight of the contrastive term")
    distill_weight: float = option(1.0, "distill_clip / tinyclip: weight of the affinity term")
    fd_weight: float = option(2000.0, "clipkd: FD weight (CLIP-KD's best: 2000)")
    icl_weight: float = option(1.0, "clipkd: ICL weight")
    crd_weight: float = option(1.0, "clipkd: CRD weight")
    teacher_logit_scale: float = option(100.0, "teacher logit scale for baselines with cached targets "
                                               "(online: the teacher's own)")

    def validate(self) -> None:
        super().validate()
        if self.teacher_online and not self.teacher:
            raise ConfigError("--teacher-online needs --teacher SPEC")
        if not self.teacher_online and not self.cache:
            raise ConfigError("give --cache DIR (cached teacher embeddings) or --teacher SPEC --teacher-online")
        if not 0.0 <= self.kd_dropout < 1.0:
            raise ConfigError(f"--kd-dropout must be in [0, 1), got {self.kd_dropout}")
        if self.rdm and self.loss != "cifd":
            raise ConfigError(f"--rdm is only used by --loss cifd, not {self.loss}")


def _dims_of(rdm) -> tuple[int, int]:
    return int(rdm.rdms("image")[0].config.input_dim), int(rdm.rdms("text")[0].config.input_dim)


def run(cfg: Config) -> int:
    import logging

    from ..data.cache import CacheJoin, check_cache_compatible, read_cache_meta
    from ..distiller import Distiller
    from ..engine import session
    from ..engine.distributed import cleanup
    from ..engine.loop import fit, seed_everything
    from ..errors import UserError
    from ..rdm import RDMFamily
    from ..towers import load_model, load_teacher, weights_fingerprint

    env, run_dir = session.start_run(cfg)
    try:
        session.preflight(cfg, env)
        meta = read_cache_meta(cfg.cache) if cfg.cache else None
        rdm = RDMFamily.load(cfg.rdm) if cfg.rdm else None
        if meta is not None and rdm is not None:
            img, txt = _dims_of(rdm)
            check_cache_compatible(meta, image_dim=img, text_dim=txt,
                                   teacher_fingerprint=rdm.meta.get("teacher_fingerprint"))
        teacher = None
        if cfg.teacher_online:
            teacher = load_teacher(cfg.teacher, cfg.teacher_pretrained, device="cpu")
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

        seed_everything(cfg.seed)  # same initial weights on every rank
        tower = load_model(cfg.model, cfg.pretrained, device="cpu")
        stages = [] if cfg.teacher_online else [CacheJoin(cfg.cache, view=cfg.cache_view, seed=cfg.seed)]
        data = session.build_loader(cfg, tower, env, teacher=teacher, sample_stages=stages)
        module = Distiller(
            tower.model, loss=cfg.loss, student_dim=tower.embed_dim, teacher_dims=teacher_dims, teacher=teacher,
            rdm=rdm, lambda_cl=cfg.lambda_cl, teacher_weight=cfg.teacher_weight, rdm_weights=cfg.rdm_weights,
            ibm=cfg.ibm, ibm_weight=cfg.ibm_weight, ibm_hidden_dim=cfg.ibm_hidden_dim, kd_dropout=cfg.kd_dropout,
            distortion=cfg.distortion, contrastive_weight=cfg.contrastive_weight, distill_weight=cfg.distill_weight,
            fd_weight=cfg.fd_weight, icl_weight=cfg.icl_weight, crd_weight=cfg.crd_weight,
            teacher_logit_scale=cfg.teacher_logit_scale, seed=cfg.seed, local_loss=cfg.local_loss,
            gather_with_grad=cfg.gather_with_grad, rank=env.rank, world_size=env.world_size)
        summary = fit(module, data, cfg, env, run_dir, describe=session.describe(tower, cfg),
                      evaluate=session.make_evaluator(cfg, tower, env),
                      find_unused_parameters=cfg.kd_dropout > 0)
        if env.is_main:
            logging.getLogger(__name__).info("done: %d steps, %.1f samples/s, outputs in %s", summary["steps"],
                                             summary["samples_per_s"], run_dir)
    finally:
        cleanup(env)
    return 0
