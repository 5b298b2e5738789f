"""Count the work of real modules without running them: models are built on the meta device (no memory, no
weights, no download), and one pass on meta tensors gives its FLOPs (torch's FlopCounterMode: matmuls,
convolutions and attention, forward and backward) and the bytes of the tensors alive at its peak.

Element-wise work (activations, norms, softmax outside fused attention, the optimizer) is not counted:
for these transformers and ResNets it is a few percent of the arithmetic.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

COUNT_BATCHES = (2, 4)  # every count is made at two batches: per-sample work and a fixed part (e.g. gradients)


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensors the ops create and that are still referenced; `peak` is the high-water mark.
    Views are not counted (they share their base's memory). Tensors autograd saves for backward stay alive only
    while referenced, so use it with `keep_saved_tensors()`."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                weakref.finalize(t, self._freed, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def keep_saved_tensors():
    """Autograd's saved tensors as Python objects, so that LiveBytes sees them live until backward frees them."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


@dataclass
class WorkCount:
    """FLOPs per sample (2 per multiply-add) and the peak bytes of tensors alive during the pass (activations,
    gradients, temporaries; not the parameters themselves) as `live_bytes` per sample + `fixed_bytes`."""
    flops: float
    live_bytes: float
    fixed_bytes: float = 0.0

    def peak_bytes(self, batch: int) -> float:
        return self.fixed_bytes + batch * self.live_bytes


def _one_pass(pass_fn: Callable[[int], None], batch: int, backward: bool) -> tuple[float, float]:
    live = LiveBytes()
    with FlopCounterMode(display=False) as flops:
        if backward:
            with live, keep_saved_tensors():
                pass_fn(batch)
        else:
            with live, torch.no_grad():
                pass_fn(batch)
    return flops.get_total_flops(), live.peak


def count(pass_fn: Callable[[int], None], backward: bool) -> WorkCount:
    """Run `pass_fn(batch)` at two batch sizes; the per-sample slope and the fixed part of FLOPs and bytes."""
    (f1, b1), (f2, b2) = (_one_pass(pass_fn, n, backward) for n in COUNT_BATCHES)
    n1, n2 = COUNT_BATCHES
    per_sample = (b2 - b1) / (n2 - n1)
    return WorkCount((f2 - f1) / (n2 - n1), per_sample, max(0.0, b1 - n1 * per_sample))


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def architecture_name(spec: str) -> str:
    """The open_clip model name of a model spec, without reading any weights (NAME@TAG and NAME@FILE give
    NAME; a model config .json or local-dir: folder is registered under its own name)."""
    import json
    from pathlib import Path

    import open_clip

    from ..errors import UserError
    from ..clip_models import _register_cfg, register_model_configs
    register_model_configs()
    spec = str(spec).strip()
    if spec.startswith("local-dir:"):
        config = Path(spec[len("local-dir:"):]) / "open_clip_config.json"
        if not config.is_file():
            raise UserError(f"{spec} is not an open_clip model folder (no {config})")
        return _register_cfg(json.loads(config.read_text())["model_cfg"], config.parent.name)
    name = spec.split("@", 1)[0]
    if name.endswith(".json") and Path(name).is_file():
        cfg = json.loads(Path(name).read_text())
        return _register_cfg(cfg.get("model_cfg", cfg), Path(name).stem)
    if open_clip.get_model_config(name) is None:
        raise UserError(f"cannot size model {spec!r}: give its architecture as an open_clip name (NAME or NAME@FILE)"
                        f" or a model config .json")
    return name


def meta_clip(spec: str) -> nn.Module:
    """An open_clip model of this spec's architecture on the meta device (weights are never read)."""
    import logging

    import open_clip

    name = architecture_name(spec)
    logging.disable(logging.WARNING)  # open_clip's creation log and its "initialized randomly" warning
    try:
        with torch.device("meta"):
            return open_clip.create_model(name, device="meta")
    finally:
        logging.disable(logging.NOTSET)


def clip_inputs(model: nn.Module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.visual.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.empty(batch, 3, h, w, device="meta")
    tokens = torch.zeros(batch, model.context_length, dtype=torch.long, device="meta")
    return images, tokens


def clip_forwards(model: nn.Module) -> tuple[WorkCount, WorkCount]:
    """A frozen forward of the image tower and of the text tower (a teacher's work per sample and view)."""
    image = count(lambda batch: model.encode_image(clip_inputs(model, batch)[0]), backward=False)
    text = count(lambda batch: model.encode_text(clip_inputs(model, batch)[1]), backward=False)
    return image, text


def clip_train_step(model: nn.Module, extra: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                    ) -> WorkCount:
    """Forward and backward of both towers (a student's work per sample); `extra(image_emb, text_emb)` adds the
    method's own differentiable work (e.g. an IBM decoder)."""
    def run(batch):
        images, tokens = clip_inputs(model, batch)
        image, text = model.encode_image(images), model.encode_text(tokens)
        loss = image.sum() + text.sum()
        if extra is not None:
            loss = loss + extra(image, text)
        loss.backward()
    model.train()
    return count(run, backward=True)


def rdm_family_work(family: nn.Module, dims: dict[str, int], train: bool) -> WorkCount:
    """The RDM family (built on the CPU: CompressAI's bottleneck reads values) on one embedding per modality:
    training (every RDM forward + backward) or teaching."""
    def run(batch):
        total = 0
        for modality, dim in dims.items():
            x = torch.randn(batch, dim)
            for rdm in family.rdms(modality):
                if train:
                    out = rdm(x)
                    total = total + out["distortion"].sum() + out["rate"].sum()
                else:
                    rdm.teach(x)
        if train:
            total.backward()
    family.train(train)
    return count(run, backward=train)
