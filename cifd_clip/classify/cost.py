"""What a classification run costs: multiply-accumulates per training sample, counted on the real modules
(torch's FlopCounterMode on one forward pass; MACs = FLOPs / 2), as the paper's Fig. 1b compares them."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def forward_macs(module: torch.nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward pass of `module` on one sample shaped like `example` [C, H, W] or [D]."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(example[None])
    finally:
        module.train(was_training)
    return int(counter.get_total_flops() // 2)


def training_macs(student, image_size: int, *, teacher=None, assistants=(), rdm=None, feature_dim=None) -> dict:
    """Per training sample: the student's forward + backward (≈ 3× forward), the frozen teacher's and the
    assistants' forward passes (0 with cached targets), the RDMs' forward passes."""
    image = torch.zeros(3, image_size, image_size)
    student_fwd = forward_macs(student, image)
    cost = {"student": 3 * student_fwd}
    cost["teacher"] = forward_macs(teacher.net, image) if teacher is not None else 0
    cost["assistants"] = sum(forward_macs(a.net, image) for a in assistants)
    if rdm is not None:
        x = torch.zeros(int(feature_dim))
        cost["rdms"] = sum(forward_macs(m, x) for m in rdm.rdms("image"))
    cost["total"] = sum(cost.values())
    cost["relative_to_student_only"] = cost["total"] / cost["student"]
    return cost


A100_BF16_PEAK = 312e12  # FLOP/s
ASSUMED_MFU = 0.4


def projection(cost: dict, samples: int, epochs: int) -> str:
    """One paragraph: what the run will cost, from the per-sample MACs."""
    total = cost["total"] * samples * epochs
    hours = 2 * total / (ASSUMED_MFU * A100_BF16_PEAK) / 3600
    parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in cost.items() if k not in ("total", "relative_to_student_only"))
    return (f"per training sample: {cost['total'] / 1e6:.1f} MMACs ({parts}; {cost['relative_to_student_only']:.2f}x "
            f"the student alone); this run: {samples} samples x {epochs} epochs = {total:.3g} MACs, about "
            f"{hours:.2f} A100-hours at {int(100 * ASSUMED_MFU)}% of bf16 peak")
