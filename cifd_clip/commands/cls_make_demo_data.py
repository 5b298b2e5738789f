"""Write the classification demo's data: the built-in shape scenes at 32×32 in CIFAR-100's pickle layout.

`--task colour-kind`: 36 classes (6 shapes × 6 colours), an easy task; `--task gap` (cls-demo's and the gap test
bed's): 72 classes (colour, kind and fill of the large shape, over a distractor, colours jittered). `--out DIR`
then reads as `cifar100:DIR`, through the same reader as the real CIFAR-100. A set of N training images is the first N of
any larger one with the same seed and task (a student's subset nests in its teacher's set).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option, required
from ..errors import ConfigError


@dataclass
class Config:
    out: str = required("output folder (OUT/cifar-100-python/{train,test,meta})")
    train_samples: int = option(5000, "training images")
    test_samples: int = option(1000, "test images")
    seed: int = option(0, "random seed")
    task: str = option("colour-kind", "colour-kind: 36 classes, one shape (an easy task); gap: 72 classes, a shape's "
                                      "colour, kind and fill over a distractor (cls-demo's and the gap test bed's)",
                       choices=["colour-kind", "gap"])

    def validate(self):
        if self.train_samples < 1 or self.test_samples < 1:
            raise ConfigError("--train-samples and --test-samples must be at least 1")


def run(cfg: Config) -> int:
    from ..classify.shapes import write_shapes_cifar
    from ..output_checks import check_folder_target

    check_folder_target(cfg.out, "--out")
    from ..classify.shapes import classnames

    out = write_shapes_cifar(cfg.out, train_samples=cfg.train_samples, test_samples=cfg.test_samples, seed=cfg.seed,
                             task=cfg.task)
    print(f"wrote {cfg.train_samples} training and {cfg.test_samples} test images ({len(classnames(cfg.task))} "
          f"classes) to {out}; "
          f"use --train-data cifar100:{out}")
    return 0
