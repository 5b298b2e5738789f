"""Options of the classification stages (torch-free), named as the CLIP stages name the same things."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..engine.options import LoopOptions
from ..errors import ConfigError

DATA_HELP = "cifar100:DIR (torchvision's cifar-100-python layout), imagefolder:DIR (train/ and val/) or wds:SHARDS"


@dataclass
class ClassifyData:
    train_data: str = required(f"training data: {DATA_HELP}")
    val_data: Optional[str] = option(None, "evaluation data (default: the val/test split of --train-data; wds needs it)")
    image_size: Optional[int] = option(None, "input resolution (default: 32 for CIFAR, 224 otherwise)")

    def validate_data(self) -> None:
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"--image-size must be at least 8, got {self.image_size}")
        if self.train_data.startswith("wds:") and getattr(self, "eval_every_epochs", 0) and not self.val_data:
            raise ConfigError("evaluating wds data needs --val-data wds:SHARDS (shards hold one split)")


@dataclass
class ClassifyTrainOptions(LoopOptions, ClassifyData):
    """A classifier trained on labelled images: a teacher, an assistant, a baseline student."""

    # the field's classification defaults (RepDistiller / the paper's CIFAR runs), not open_clip's
    optimizer: str = option("sgd", "sgd with --momentum (the field's) or adamw", choices=["adamw", "sgd"])
    lr: float = option(0.05, "peak learning rate (CIFAR recipes: 0.05, as RepDistiller)")
    wd: float = option(5e-4, "weight decay (not applied to gains and biases)")
    warmup: float = option(0.0, "linear warm-up: a fraction of the run when below 1, else steps (none by default)")
    grad_clip_norm: Optional[float] = option(5.0, "clip the gradient norm to this value: CIFD's feature terms (weight "
                                                  "100) diverged within 10 SGD steps at lr 0.05 without it (measured "
                                                  "on the demo); the same for every method, for a fair comparison")
    model: str = required("classifier: a zoo name (resnet8x4, wrn_40_2, cnn10, resnet18, timm:NAME, ...), "
                          "NAME@FILE, or a checkpoint of ours")
    pretrained: Optional[str] = option(None, "initial weights file for --model")
    dry_run: bool = option(False, "print the run's cost (MACs per sample and in all, A100-hours at 40% of bf16 "
                                  "peak) and stop before training")

    def validate(self) -> None:
        LoopOptions.validate(self)
        self.validate_data()
        if self.precision in ("bf16", "fp16", "pure_bf16", "pure_fp16"):
            raise ConfigError(f"--precision {self.precision} (open_clip_train's low-precision weights) is for the "
                              f"CLIP training stages; a classifier trains with amp_bf16, amp or fp32")
