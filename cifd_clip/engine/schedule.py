"""AdamW with open_clip's parameter groups and its cosine schedule with linear warm-up.

Defaults follow open_clip_train (lr 5e-4, wd 0.2, betas 0.9/0.98, eps 1e-6) except the warm-up, which is a
fraction of the run (0.1) rather than open_clip's fixed 10000 steps, so a short run still reaches its lr.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _no_weight_decay(module_name: str, param_name: str, p: torch.Tensor, density_params: set) -> bool:
    full = f"{module_name}.{param_name}" if module_name else param_name
    # open_clip's rule: gains, biases, norms and the logit scale are not decayed; nor are the generators of
    # parametrized (e.g. orthogonal) maps, whose norm means nothing (decay would pull a rotation to a fixed one)
    return (p.ndim < 2 or "bn" in full or "ln" in full or "bias" in full or "logit_scale" in full
            or "parametrizations." in full or id(p) in density_params)


def density_parameter_ids(model: nn.Module) -> set:
    """Parameters of CompressAI entropy models: a learned density, not weights to shrink."""
    try:
        from ..entropy import EntropyModel
    except ImportError:  # pragma: no cover - compressai is a dependency
        return set()
    return {id(p) for m in model.modules() if isinstance(m, EntropyModel) for p in m.parameters()}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights and the rest; frozen parameters are left out."""
    density = density_parameter_ids(model)
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if _no_weight_decay("", name, p, density) else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, lr: float = 5e-4, weight_decay: float = 0.2, beta1: float = 0.9,
                   beta2: float = 0.98, eps: float = 1e-6, kind: str = "adamw",
                   momentum: float = 0.9, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW (open_clip's defaults) or SGD with momentum (the classification recipes'), same groups.
    `fused`: torch's one-kernel update; otherwise torch's multi-tensor (foreach) one, on the CPU too, where
    torch's default is a Python loop over the tensors: the same arithmetic and results, bit for bit
    (tests/test_gpu_flags.py), in less time (bench_step's optimizer phase: 15-17 -> 12 ms for tiny-vit-student)."""
    groups = param_groups(model, weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **_kernel(fused))
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, **_kernel(fused))


def _kernel(fused: bool) -> dict:
    """torch's group options for the fused update, or else the multi-tensor one."""
    return {"fused": True, "foreach": None} if fused else {"fused": None, "foreach": True}


def set_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """Keep this run's fused / foreach setting after `load_state_dict`, which takes every group option from the
    checkpoint: a checkpoint written on CPU resumes fused on a GPU, and the other way round. AdamW's
    step counters move to where that kernel wants them (the parameter's device when fused, else the CPU)."""
    for group in optimizer.param_groups:
        if "fused" not in group:
            continue
        group.update(_kernel(fused))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                capturable = group.get("capturable", False)
                state["step"] = step.to(dtype=torch.float32, device=p.device if fused or capturable else "cpu")


class WarmupCosine:
    """lr(step) = base·(step+1)/warmup during warm-up, then half a cosine down to 0 at total_steps.

    Like open_clip's `cosine_lr`, it is called with the step index before each optimizer
    step; its state is only that index, so resuming restores it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.warmup = max(0, int(warmup_steps))
        self.total = max(1, int(total_steps))
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = lr
        self.last_step = -1

    def lr_at(self, base_lr: float, step: int) -> float:
        if step < self.warmup:
            return base_lr * (step + 1) / self.warmup
        e = step - self.warmup
        es = max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(e, es) / es)) * base_lr

    def step(self, step: int) -> float:
        self.last_step = step
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(base, step)
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "warmup": self.warmup, "total": self.total,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])


class WarmupStep(WarmupCosine):
    """Linear warm-up, then the base rate multiplied by `rate` at each milestone step (RepDistiller's CIFAR
    schedule: ×0.1 at epochs 150, 180 and 210 of 240)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 milestones: list[int], rate: float = 0.1):
        super().__init__(optimizer, warmup_steps, total_steps)
        self.milestones, self.rate = sorted(int(m) for m in milestones), float(rate)

    def lr_at(self, base_lr: float, step: int) -> float:
        if step < self.warmup:
            return base_lr * (step + 1) / self.warmup
        return base_lr * self.rate ** sum(step >= m for m in self.milestones)


def make_schedule(optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: int) -> WarmupCosine:
    """`--lr-schedule cosine` (default) or `step` (decay by --lr-decay-rate at each --lr-decay-epochs)."""
    warmup = cfg.warmup_steps(total_steps)
    if getattr(cfg, "lr_schedule", "cosine") == "step":
        milestones = [round(e * steps_per_epoch) for e in cfg.lr_decay_epochs]
        return WarmupStep(optimizer, warmup, total_steps, milestones, cfg.lr_decay_rate)
    return WarmupCosine(optimizer, warmup, total_steps)
