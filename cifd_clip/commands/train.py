"""Train an open_clip model contrastively, without a teacher (the "no distillation" baseline).

Plain CLIP training on image-text shards with open_clip's ClipLoss, in the same loop as
`cifd-clip distill`: torchrun DDP, accumulation, clipping, exact-step resume, metrics JSONL.
Outputs: <logs>/<name>/{config.yaml, checkpoints/, metrics.jsonl, summary.json}.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.options import TrainingOptions


@dataclass
class Config(TrainingOptions):
    pass


def run(cfg: Config) -> int:
    from ..distill.distiller import Distiller
    from ..distill.settings import LossSettings
    from ..engine import session
    from ..evaluation import during_training
    from ..engine.loop import seed_everything
    from ..clip_models import load_model

    def prepare(env, run_dir):
        session.preflight(cfg, env)
        seed_everything(cfg.seed)  # same initial weights on every rank
        tower = load_model(cfg.model, cfg.pretrained, device="cpu", cache_dir=cfg.cache_dir)
        module = Distiller.build(tower.model, LossSettings(loss="contrastive"), student_dim=tower.embed_dim,
                                 seed=cfg.seed, local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad,
                                 rank=env.rank, world_size=env.world_size)
        return session.TrainingSetup(module, session.build_loader(cfg, tower, env), session.describe(tower, cfg),
                                    during_training.make_evaluator(cfg, tower, env))

    return session.run_training(cfg, prepare, checks=[during_training.check_eval_sets])
