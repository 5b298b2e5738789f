"""Print what a recipe will cost before it runs: FLOPs per step counted on the real model configs,
GPU-hours at a stated MFU and GPU type, the embedding cache's size on disk, the peak memory per GPU at each
step's batch, and the same figures for plain KD and a TAKD-style run of the same student.

    cifd-clip plan --recipe recipes/clip/vitl14-vits16.yaml --gpu a100 --mfu 0.4

Nothing is downloaded or allocated: models are built on PyTorch's meta device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import option, required
from ..errors import ConfigError

GPU_NAMES = ["a100", "h100", "h200", "l40s", "v100"]


@dataclass
class Config:
    recipe: str = required("recipe YAML (recipes/clip/*.yaml)")
    var: list[str] = option([], "replace recipe vars, NAME=VALUE, one or more after each --var", append=True)
    gpu: str = option("a100", "GPU type whose dense bf16 peak is used", choices=GPU_NAMES)
    peak_tflops: Optional[float] = option(None, "peak TFLOP/s per GPU instead of --gpu's data-sheet figure")
    mfu: float = option(0.4, "model FLOPs utilisation assumed for the GPU-hours (0.3-0.5 is typical for CLIP)")
    gpus: Optional[int] = option(None, "GPUs the run uses, for the wall hours (default: the recipe's plan.gpus, else 1)")
    json_out: Optional[str] = option(None, "also write the plan as JSON to this file")
    smoke_data: Optional[str] = option(None, "plan the recipe's smoke variant on the demo data in this folder")

    def validate(self) -> None:
        from .launch import var_items
        var_items(self.var)
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ConfigError(f"--peak-tflops must be positive, got {self.peak_tflops}")
        if self.gpus is not None and self.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {self.gpus}")


def run(cfg: Config) -> int:
    from ..launch.recipe import load_recipe
    from ..plan.estimate import Planner, format_plan
    from .launch import recipe_vars

    recipe = load_recipe(cfg.recipe, recipe_vars(cfg), smoke=cfg.smoke_data is not None)
    gpus = cfg.gpus or int(recipe.plan.get("gpus", 1))
    planner = Planner(recipe, gpu=cfg.gpu, mfu=cfg.mfu, gpus=gpus,
                      peak_flops=cfg.peak_tflops * 1e12 if cfg.peak_tflops else None)
    plan = planner.plan()
    print(format_plan(plan))
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return 0
