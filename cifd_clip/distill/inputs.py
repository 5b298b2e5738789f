"""The distillation training stream: the student sees exactly the pixels its targets were computed from.

With cached targets, each sample's cached view (the plain image, or a stored random crop + flip, drawn per
epoch when the cache holds several) is replayed on the source image; with an online teacher both models see
the plain image. After that the student's transform is deterministic (its eval preprocess: resize, centre
crop, normalise, as the teacher's was), never open_clip's random training crop, which would show the
student a region the teacher never saw (MobileCLIP's dataset reinforcement does the same).
"""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger(__name__)


def build_distill_loader(cfg, tower, env, *, teacher=None, cache_view: Optional[str] = None):
    """`cfg`: the distill Config (train_data, cache, seed, ...); `cache_view`: None (auto), "first" or "random"."""
    from ..data.embedding_cache import CacheJoin
    from ..engine import session

    from ..clip_models import same_inputs

    stages = [] if teacher is not None else [CacheJoin(cfg.cache, view=cache_view, seed=cfg.seed)]
    if teacher is not None and same_inputs(tower, teacher.tower):
        # The teacher's eval preprocess and tokenizer would make the student's tensors again: the teacher reads the
        # student's batch, one preprocess and tokenization per sample (as open_clip_train's --distill-model).
        if env.is_main:
            log.info("online teacher: same preprocessing and tokenizer as the student, so it reads the student's batch")
        teacher = None
    return session.build_loader(cfg, tower, env, teacher=teacher, sample_stages=stages,
                                preprocess=tower.preprocess_val)
