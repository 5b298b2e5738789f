"""Numeric precision of a stage (`--precision`) and the autocast context it means, for every stage; and the
GPU speed settings of the training loop (`--tf32`, `--fused-optimizer`, `--channels-last`, `--torchcompile`,
`--grad-checkpointing`, `--pin-memory`), resolved once per run from the options and the device.

Every speed setting defaults to what is right on a GPU and leaves a CPU run exactly as it was: a setting
that cannot apply on the device (TF32 or pinned memory on CPU) resolves to off, is logged, and is no error.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Optional

import torch

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto`: amp (fp16 autocast) on CUDA, fp32 on CPU, where open_clip's amp is about 10x slower.
    Inference stages (embed, eval) use this; training uses `resolve_training_precision`."""
    device = torch.device(device)
    if precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    if precision == "amp" and device.type != "cuda":
        log.warning("--precision amp on CPU is about 10x slower than fp32 (it is kept because you asked for it)")
    return precision


def cuda_bf16_supported(device: torch.device | str) -> bool:
    """Whether the GPU runs bf16 natively (Ampere and later); an emulated bf16 would be slower than fp16."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation argument
        return bool(torch.cuda.is_bf16_supported())


def resolve_training_precision(precision: str, device: torch.device | str,
                               bf16_supported: Optional[bool] = None) -> str:
    """`auto` when training: bf16 autocast on a GPU with native bf16 (fp16's range needs no loss scaler there, and
    the contrastive logits and IBM rates cannot overflow it), fp16 amp on an older GPU, fp32 on CPU."""
    device = torch.device(device)
    if precision == "auto" and device.type == "cuda":
        if bf16_supported is None:
            bf16_supported = cuda_bf16_supported(device)
        return "amp_bf16" if bf16_supported else "amp"
    return resolve_precision(precision, device)


# open_clip_train's precisions that put the student's weights in low precision (open_clip's create_model): bf16/fp16
# convert its matmul and convolution weights (convert_weights_to_lp; norms, logit scale and embeddings stay fp32),
# pure_* the whole model; no autocast and no loss scaler, as open_clip_train trains them.
LOW_PRECISION_WEIGHTS = {"bf16": torch.bfloat16, "fp16": torch.float16, "pure_bf16": torch.bfloat16,
                         "pure_fp16": torch.float16}


def lower_weights(student: torch.nn.Module, precision: str) -> None:
    """The student's weights in the dtype of a low-precision --precision (nothing for the others)."""
    dtype = LOW_PRECISION_WEIGHTS.get(precision)
    if dtype is None:
        return
    if precision.startswith("pure_"):
        student.to(dtype=dtype)
    else:
        from open_clip.model import convert_weights_to_lp
        convert_weights_to_lp(student, dtype=dtype)


def autocast(precision: str, device: torch.device | str):
    device = torch.device(device)
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls (cuBLAS) and convolutions (cuDNN); process-wide, as open_clip_train sets it.

    Through the `allow_tf32` flags, which torch keeps consistent with its newer `fp32_precision` ones and which touch
    no CPU (oneDNN) setting; setting `fp32_precision` directly would make any later read of `allow_tf32` (inductor's
    convolution templates, other libraries) raise a RuntimeError about mixing the two APIs."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


@dataclass(frozen=True)
class SpeedSettings:
    """What a training run got of the speed options, after the device had its say."""

    precision: str
    tf32: bool
    fused_optimizer: bool
    channels_last: bool
    torchcompile: bool
    grad_checkpointing: bool
    pin_memory: bool

    def describe(self, optimizer: str = "adamw") -> str:
        def on(flag: bool) -> str:
            return "on" if flag else "off"

        name = {"adamw": "AdamW", "sgd": "SGD"}.get(optimizer, optimizer)
        return (f"precision {self.precision}, tf32 {on(self.tf32)}, {'fused' if self.fused_optimizer else 'multi-tensor'} "
                f"{name}, channels_last {on(self.channels_last)}, compile {on(self.torchcompile)}, grad checkpointing "
                f"{on(self.grad_checkpointing)}, pin memory {on(self.pin_memory)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _fused_kernel_on(device: torch.device) -> bool:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch: CUDA only
        return device.type == "cuda"
    if device.type in _get_fused_kernels_supported_devices():
        return True
    log.info("--fused-optimizer: torch has no fused optimizer kernel for %s; the optimizer runs its multi-tensor update", device)
    return False


def resolve_pin_memory(cfg, device: torch.device | str) -> bool:
    """--pin-memory (`None`: auto) on this device: on with CUDA unless turned off; always off on CPU, where there is
    no GPU to copy to. The training stages pass the answer to the loader they build (the DataLoader pins in its own
    thread as batches arrive) and the loop copies batches without blocking when it is on."""
    pin = getattr(cfg, "pin_memory", None)
    return torch.device(device).type == "cuda" and (True if pin is None else bool(pin))


def resolve_speed_settings(cfg, device: torch.device | str, *, convolutional: bool, grad_checkpointing_ok: bool = True,
                           bf16_supported: Optional[bool] = None) -> SpeedSettings:
    """The run's settings from the options (`None`: auto) and the device: TF32 and pinned memory need CUDA; the
    fused optimizer defaults to CUDA only (an explicit --fused-optimizer uses torch's CPU kernel on CPU);
    channels_last defaults to on for a convolutional student on CUDA (cuDNN's NHWC kernels; a ViT's one
    patch convolution gains nothing); grad checkpointing needs a model that has it."""
    device = torch.device(device)
    cuda = device.type == "cuda"

    def auto(value: Optional[bool], default: bool) -> bool:
        return default if value is None else bool(value)

    channels_last = auto(getattr(cfg, "channels_last", None), cuda and convolutional)
    if channels_last and not convolutional:
        log.info("--channels-last: the student has no convolutional layers to speak of, so it is left as it is")
        channels_last = False
    grad_checkpointing = bool(getattr(cfg, "grad_checkpointing", False))
    if grad_checkpointing and not grad_checkpointing_ok:
        log.warning("--grad-checkpointing: this student has no gradient checkpointing (open_clip's "
                    "set_grad_checkpointing); it trains without")
        grad_checkpointing = False
    return SpeedSettings(
        precision=resolve_training_precision(getattr(cfg, "precision", "auto"), device, bf16_supported),
        tf32=cuda and bool(getattr(cfg, "tf32", True)),
        fused_optimizer=auto(getattr(cfg, "fused_optimizer", None), cuda) and _fused_kernel_on(device),
        channels_last=channels_last,
        torchcompile=bool(getattr(cfg, "torchcompile", False)),
        grad_checkpointing=grad_checkpointing,
        pin_memory=resolve_pin_memory(cfg, device),
    )
