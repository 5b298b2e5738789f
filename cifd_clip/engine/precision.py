"""Numeric precision of a stage (`--precision`) and the autocast context it means, for every stage."""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto`: amp (fp16 autocast) on CUDA, fp32 on CPU, where open_clip's amp is about 10x slower."""
    device = torch.device(device)
    if precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    if precision == "amp" and device.type != "cuda":
        log.warning("--precision amp on CPU is about 10x slower than fp32 (it is kept because you asked for it)")
    return precision


def autocast(precision: str, device: torch.device | str):
    device = torch.device(device)
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
