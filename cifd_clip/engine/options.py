"""Options shared by `cifd-clip train` and `cifd-clip distill` (names follow open_clip_train)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import option, required
from ..data.csv_source import CsvDataOptions
from ..errors import ConfigError

PRECISIONS = ["auto", "fp32", "amp", "amp_bf16"]
# open_clip_train's low-precision weights (precision.LOW_PRECISION_WEIGHTS), for the CLIP training stages
TRAINING_PRECISIONS = PRECISIONS + ["amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16"]


def report_to_option():
    """`--report-to`, the same field in every training stage's options (engine/trackers.py)."""
    return option("none", "experiment trackers, open_clip_train's --report-to: tensorboard, wandb, "
                          "tensorboard,wandb, all or none (default: none; metrics.jsonl is always written)")


def wandb_project_option():
    return option("cifd-clip", "the wandb project of --report-to wandb (open_clip_train's --wandb-project-name)")


def validate_trackers(cfg) -> None:
    """A tracker name that does not exist, or one whose package is not installed, is refused before any work."""
    from .trackers import check_installed, parse_report_to
    check_installed(parse_report_to(cfg.report_to))


@dataclass
class LoopOptions:
    """What the training loop itself reads: run folder, optimizer, schedule, precision, checkpoints, resume.
    Every training stage (CLIP and classification) inherits these, with the stage's own data and model."""

    logs: str = option("./logs", "folder holding one sub-folder per run")
    name: Optional[str] = option(None, "run name: outputs go to <logs>/<name>/ (default: date-model)")
    epochs: int = option(1, "number of epochs")
    batch_size: int = option(64, "batch size per process (global batch = batch size × processes × accum-freq)")
    lr: float = option(5e-4, "peak learning rate")
    wd: float = option(0.2, "weight decay (not applied to gains, biases, logit scale, densities)")
    optimizer: str = option("adamw", "adamw (open_clip's) or sgd with --momentum (the classification recipes')",
                            choices=["adamw", "sgd"])
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.98, "AdamW beta2")
    eps: float = option(1e-6, "AdamW epsilon")
    momentum: float = option(0.9, "SGD momentum")
    lr_schedule: str = option("cosine", "after the warm-up: cosine decay to 0, or step decay (×--lr-decay-rate at "
                                        "each of --lr-decay-epochs)", choices=["cosine", "step"],
                              also=["lr_scheduler"])
    lr_decay_epochs: list[float] = option([], "step schedule: epochs at which the learning rate is decayed")
    lr_decay_rate: float = option(0.1, "step schedule: factor applied at each decay epoch")
    warmup: float = option(0.1, "linear warm-up before the cosine decay: a fraction of the run's optimizer steps "
                                "when below 1, else a number of steps (open_clip's fixed 10000 exceeds a short "
                                "run; 0.1 is its share at paper scale)")
    workers: int = option(1, "data-loading worker processes per training process")
    persistent_workers: bool = option(True, "keep the loader's worker processes from one epoch to the next, as "
                                            "open_clip_train does (default: on; no effect with --workers 0)")
    precision: str = option("auto", "when auto: amp_bf16 on CUDA (fp16 amp on a GPU without bf16), fp32 on CPU "
                                    "(open_clip's amp is ~10x slower there); open_clip_train's amp_bfloat16 (= "
                                    "amp_bf16), bf16/fp16 (the student's matmul and conv weights in that dtype, no "
                                    "autocast) and pure_bf16/pure_fp16 (all its weights) too",
                            choices=TRAINING_PRECISIONS)
    tf32: bool = option(True, "TF32 tensor cores for fp32 matmuls and convolutions on CUDA (default: on; no effect "
                              "on CPU)")
    fused_optimizer: Optional[bool] = option(None, "torch's fused AdamW/SGD kernel (default: on with CUDA, off on "
                                                   "CPU; --fused-optimizer on CPU uses torch's CPU kernel)")
    channels_last: Optional[bool] = option(None, "channels_last memory format for a convolutional student (ResNet, "
                                                 "CNN) and its input images (default: on with CUDA for a "
                                                 "convolutional student, else off)")
    torchcompile: bool = option(False, "torch.compile the student's towers (open_clip_train's --torchcompile; the "
                                       "first steps compile)")
    grad_checkpointing: bool = option(False, "recompute the student's transformer blocks in the backward pass "
                                             "(open_clip's set_grad_checkpointing): less memory for one more forward pass of them")
    pin_memory: Optional[bool] = option(None, "page-locked loader batches, copied to the GPU without blocking "
                                              "(default: on with CUDA; no effect on CPU)")
    accum_freq: int = option(1, "micro-batches per optimizer step (losses are summed, see docs/training.md)")
    grad_clip_norm: Optional[float] = option(None, "clip the gradient norm to this value")
    resume: Optional[str] = option(None, "`latest` (this run's newest checkpoint, if any) or a checkpoint file")
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    save_every_epochs: int = option(1, "write checkpoints/epoch_N.pt every N epochs; the last epoch (and a stop by "
                                       "--stop-after-steps) always writes one (0: only then)",
                                    also=["save_frequency"])
    save_every_steps: int = option(0, "also write checkpoints/step_N.pt every N optimizer steps (0: epoch ends only)")
    keep_step_checkpoints: int = option(2, "keep the newest N step checkpoints, deleting older ones once a new one "
                                           "is written (0: keep every one; epoch checkpoints are kept unless "
                                           "--delete-previous-checkpoint)")
    delete_previous_checkpoint: bool = option(False, "delete the checkpoints written before a new one once it is "
                                                     "complete, so the run keeps only its newest (open_clip_train's "
                                                     "--delete-previous-checkpoint)")
    save_most_recent: bool = option(True, "keep checkpoints/epoch_latest.pt on the newest checkpoint, a hard link "
                                          "(open_clip_train's --save-most-recent, on here by default: --resume "
                                          "latest and the recipes read it)")
    log_every_steps: int = option(1, "write a metrics.jsonl line every N optimizer steps",
                                  also=["log_every_n_steps"])
    report_to: str = report_to_option()
    wandb_project_name: str = wandb_project_option()
    log_every_rank: bool = option(False, "every process writes its own out-RANK.log in the run folder too (rank 0 "
                                         "always writes out.log)")
    skip_nonfinite: bool = option(False, "skip an optimizer step whose loss or gradient is NaN/inf instead of stopping")
    stop_after_steps: Optional[int] = option(None, "stop once this many optimizer steps are done in total, "
                                                   "with a checkpoint (time-boxed jobs; resume later)")
    eval_every_epochs: int = option(0, "evaluate every N epochs (CLIP: zero-shot on --eval-datasets; classification: "
                                          "the val split; 0: never)")

    def warmup_steps(self, total_steps: int) -> int:
        return int(round(self.warmup * total_steps)) if self.warmup < 1 else int(self.warmup)

    def validate(self) -> None:
        validate_trackers(self)
        if self.precision == "amp_bfloat16":  # open_clip_train's other spelling
            self.precision = "amp_bf16"
        for key in ("epochs", "batch_size", "accum_freq"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.warmup < float("inf") or (self.warmup >= 1 and self.warmup != int(self.warmup)):
            raise ConfigError(f"--warmup must be a fraction of the run below 1 or a whole number of steps, "
                              f"got {self.warmup}")
        for key in ("workers", "save_every_epochs", "save_every_steps", "keep_step_checkpoints",
                    "eval_every_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"--{key.replace('_', '-')} must not be negative, got {getattr(self, key)}")
        if self.log_every_steps < 1:
            raise ConfigError(f"--log-every-steps must be at least 1, got {self.log_every_steps}")
        inf = float("inf")
        if not 0 < self.lr < inf:
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.wd < inf:
            raise ConfigError(f"--wd must be a non-negative number, got {self.wd}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"--{key} must be in [0, 1) (AdamW's moment decay), got {getattr(self, key)}")
        if not 0 < self.eps < inf:
            raise ConfigError(f"--eps must be a positive number, got {self.eps}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.lr_decay_rate <= 1:
            raise ConfigError(f"--lr-decay-rate must be in (0, 1], got {self.lr_decay_rate}")
        if self.lr_schedule == "step" and not self.lr_decay_epochs:
            raise ConfigError("--lr-schedule step needs --lr-decay-epochs (e.g. 150 180 210)")
        if self.lr_decay_epochs and self.lr_schedule != "step":
            raise ConfigError("--lr-decay-epochs is used by --lr-schedule step only")
        if any(not 0 < e <= self.epochs for e in self.lr_decay_epochs):
            raise ConfigError(f"--lr-decay-epochs must lie within the run's {self.epochs} epochs, got "
                              f"{self.lr_decay_epochs}")
        if self.grad_clip_norm is not None and not 0 < self.grad_clip_norm < inf:
            raise ConfigError(f"--grad-clip-norm must be a positive number, got {self.grad_clip_norm}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ConfigError(f"--stop-after-steps must be at least 1, got {self.stop_after_steps}")


@dataclass
class TrainingOptions(LoopOptions, CsvDataOptions):
    """`cifd-clip train` and `cifd-clip distill`: CLIP training on image-text shards (names as open_clip_train)."""

    train_data: str = required("training shards: brace-expanded tar list, `::` joins sources (img2dataset layout); "
                               "or a CSV of image paths and captions (--dataset-type csv)")
    model: str = required("student model spec: open_clip name, NAME@FILE, local-dir:PATH or a JSON config")
    pretrained: Optional[str] = option(None, "initialise the student from this checkpoint file (or open_clip tag)")
    cache_dir: Optional[str] = option(None, "where pretrained weights are downloaded to and looked for (open_clip's "
                                            "--cache-dir; default: the Hugging Face cache)")
    train_num_samples: Optional[int] = option(None, "samples per epoch (default: the shards' sizes.json/__len__)")
    dataset_resampled: bool = option(False, "draw shards with replacement (open_clip's --dataset-resampled)")
    max_bad_fraction: float = option(0.05, "stop when more than this fraction of the samples read are bad "
                                           "(undecodable, missing image or caption; checked as data arrives and at "
                                           "each epoch's end)")
    local_loss: bool = option(False, "contrastive loss on local rows only against all gathered features")
    gather_with_grad: bool = option(False, "all-gather features with gradients (exact full-batch gradients under DDP)")
    eval_datasets: list[str] = option([], "sets to evaluate during training: NAME (the folder --eval-dataset-root/NAME, "
                                          "a CLIP_benchmark webdataset set unless NAME is one eval knows, e.g. "
                                          "imagenet1k) or NAME=PATH (any set eval reads, e.g. imagenet1k=/data/in1k)")
    eval_dataset_root: Optional[str] = option(None, "folder holding the eval datasets (DATASET/ sub-folders)")
    recall_k: list[int] = option([1, 5], "K values of recall@K for the retrieval sets evaluated during training")

    def validate(self) -> None:
        LoopOptions.validate(self)
        CsvDataOptions.validate(self)
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"--max-bad-fraction must be between 0 and 1, got {self.max_bad_fraction}")
        if self.train_num_samples is not None and self.train_num_samples < 1:
            raise ConfigError(f"--train-num-samples must be at least 1, got {self.train_num_samples}")
        if self.eval_every_epochs and not self.eval_datasets:
            raise ConfigError("--eval-every-epochs needs --eval-datasets (and --eval-dataset-root for sets given by "
                              "folder name)")
        if self.eval_every_epochs and not self.eval_dataset_root and not all(
                "=" in d and Path(d.partition("=")[2]).expanduser().is_absolute() for d in self.eval_datasets):
            raise ConfigError("--eval-every-epochs needs --eval-dataset-root for --eval-datasets given by folder name "
                              "or relative path")
        if not self.recall_k or any(k < 1 for k in self.recall_k):
            raise ConfigError(f"--recall-k needs values of at least 1, got {self.recall_k}")
