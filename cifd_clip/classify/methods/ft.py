"""Factor transfer (Kim et al. 2018)."""
from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ...core import losses as L
from ...core.distiller_base import DistillerBase
from .base import ClassifyMethod, RunContext

log = logging.getLogger(__name__)


class FT(ClassifyMethod):
    """Paraphraser (teacher side: encoder to factors, with a decoder back for its reconstruction) and translator
    (student side); the student matches the teacher's normalised factors in L1. With `--ft-paraphraser-epochs N`
    (the paper's two stages) the paraphraser first learns to rebuild the teacher's last map for N epochs
    (`before_training`), then stays frozen; with 0 it learns its reconstruction beside the student
    (term `ft_paraphraser`)."""

    uses_feature_maps = True

    def __init__(self, settings, *, student_channels: int, teacher_channels: int, **_):
        super().__init__(settings)
        factors = max(1, round(teacher_channels * settings.ft_rate))
        self.paraphraser = nn.Sequential(nn.Conv2d(teacher_channels, factors, 3, padding=1), nn.LeakyReLU(0.1))
        self.reconstruct = nn.Conv2d(factors, teacher_channels, 3, padding=1)
        self.translator = nn.Sequential(nn.Conv2d(student_channels, factors, 3, padding=1), nn.LeakyReLU(0.1))
        self.pretrained_paraphraser = settings.ft_paraphraser_epochs > 0

    def before_training(self, run: RunContext) -> None:
        if not self.pretrained_paraphraser:
            return
        train_paraphraser(self, run)
        for p in (*self.paraphraser.parameters(), *self.reconstruct.parameters()):
            p.requires_grad_(False)

    def forward(self, student, targets, generator=None):
        teacher_map = targets.feature_map.detach()
        factor_t = self.paraphraser(teacher_map)
        factor_s = self.translator(student.feature_map)
        if factor_s.shape[-2:] != factor_t.shape[-2:]:
            factor_s = F.adaptive_avg_pool2d(factor_s, factor_t.shape[-2:])
        out = {**self.ce(student, targets), **self.kd_terms(student, targets, generator),
               "ft": self.s.ft_weight * L.factor_transfer(factor_s, factor_t.detach())}
        if not self.pretrained_paraphraser:
            out["ft_paraphraser"] = F.mse_loss(self.reconstruct(factor_t), teacher_map)
        return out


class ParaphraserPhase(DistillerBase):
    """FT's first stage as a run of the training loop: its trained part (`student` to the loop) is the paraphraser
    and its decoder, which it shares with the FT method; the loss is the MSE of the teacher's rebuilt last map."""

    def __init__(self, ft: FT, teacher: nn.Module, seed: int = 0):
        autoencoder = nn.ModuleDict({"paraphraser": ft.paraphraser, "reconstruct": ft.reconstruct})
        super().__init__(autoencoder, nn.Module(), {"teacher": teacher}, seed)

    def forward(self, batch: dict) -> dict:
        image = batch.get("teacher_image", batch["image"])
        with torch.autocast(image.device.type, enabled=False):  # the teacher in fp32, as in the student's run
            teacher_map = self._frozen["teacher"](image, with_map=True)[0]
            rebuilt = self.student["reconstruct"](self.student["paraphraser"](teacher_map))
            return {"ft_paraphraser": F.mse_loss(rebuilt, teacher_map)}


def train_paraphraser(ft: FT, run: RunContext) -> None:
    """`--ft-paraphraser-epochs` of the loop in RUN/paraphraser/ (its checkpoints, metrics and summary), at the
    run's optimizer and a constant --lr (RepDistiller: SGD at a constant rate). It resumes with the run: a
    finished phase is loaded, not trained again. --stop-after-steps counts the student's steps only."""
    from ...engine.loop import fit

    distiller = run.distiller
    cfg = dataclasses.replace(run.cfg, epochs=ft.s.ft_paraphraser_epochs, resume="latest" if run.cfg.resume else None,
                              stop_after_steps=None, eval_every_epochs=0, save_every_steps=0, report_to="none",
                              lr_schedule="step", lr_decay_epochs=[], warmup=0)
    folder = run.run_dir / "paraphraser"
    if run.env.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        log.info("FT: training the paraphraser on the teacher's last map for %d epochs in %s", cfg.epochs, folder)
    describe = {"model_name": "ft-paraphraser", "model_cfg": {"ft_rate": ft.s.ft_rate}, "preprocess_cfg": {},
                "config": {"ft_paraphraser_epochs": cfg.epochs}}
    phase = ParaphraserPhase(ft, distiller._frozen["teacher"], seed=run.cfg.seed)
    summary = fit(phase, run.data, cfg, run.env, folder, describe=describe)
    if run.env.is_main:
        log.info("FT: paraphraser trained (%d steps, last reconstruction MSE %s)", summary["steps"],
                 summary["final_metrics"].get("ft_paraphraser", "-"))
