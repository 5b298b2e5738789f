"""Run a paper-scale recipe (recipes/clip/*.yaml) step by step on this node, each step under torchrun.

One node:       cifd-clip launch --recipe recipes/clip/vitl14-vits16.yaml --nproc-per-node 4
Several nodes:  the same command on every node, with --nnodes N --node-rank I --rdzv-endpoint HOST:PORT
                (recipes/launch/slurm.sbatch does this for a SLURM job; the output folder must be shared).
srun, one task per GPU and no torchrun: `srun cifd-clip launch --recipe ... --launcher srun` (each task runs
                every step as one rank; recipes/launch/slurm-srun.sbatch; MASTER_ADDR must be exported).
--print-only prints every step's launch line without running anything (it writes the step config files they
read, OUT/launch/STEP.yaml); each is a command you can run by hand. A finished step is skipped when the recipe runs again (its marker is OUT/launch/STEP.done); an
interrupted step resumes. --smoke-data DIR runs the recipe's smoke variant (tiny stand-in models on the
demo data made by `cifd-clip make-demo-data --out DIR`, a few steps each): how CI checks every recipe.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import option, required
from ..errors import ConfigError, UserError


def _env_node_rank() -> int:
    for name in ("NODE_RANK", "SLURM_NODEID", "GROUP_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


@dataclass
class Config:
    recipe: str = required("recipe YAML (recipes/clip/*.yaml)")
    out: Optional[str] = option(None, "output folder (default: the recipe's var `out`)")
    var: list[str] = option([], "replace recipe vars, NAME=VALUE, one or more after each --var (e.g. --var "
                                "student=RN50 train_data=/data/cc12m/{00000..01242}.tar)", append=True)
    steps: list[str] = option([], "run only these steps (default: all, in the recipe's order)")
    skip: list[str] = option([], "leave out these steps")
    nproc_per_node: int = option(1, "processes (GPUs) per node for the steps that run on all processes")
    nnodes: int = option(1, "nodes taking part (each runs this same command)")
    node_rank: Optional[int] = option(None, "this node's rank (default: $NODE_RANK or $SLURM_NODEID, else 0)")
    rdzv_endpoint: Optional[str] = option(None, "HOST:PORT of the c10d rendezvous (several nodes)")
    rdzv_id: str = option("cifd-clip", "rendezvous id prefix (each step appends its name)")
    launcher: str = option("torchrun", "torchrun: this command runs once per node and starts each step under "
                                       "torchrun; srun: it runs once per srun task (one per GPU) and each task runs "
                                       "every step as one rank, from SLURM_PROCID/SLURM_STEP_NUM_TASKS (default: torchrun)",
                           choices=["torchrun", "srun"])
    print_only: bool = option(False, "print each step's launch line and run nothing (the step config files the "
                                     "lines read are written to OUT/launch/)")
    smoke_data: Optional[str] = option(None, "run the recipe's smoke variant on the demo data in this folder "
                                             "(`cifd-clip make-demo-data --out DIR`)")

    def validate(self) -> None:
        var_items(self.var)
        if self.launcher == "srun" and (self.nproc_per_node, self.nnodes, self.node_rank, self.rdzv_endpoint) != \
                (1, 1, None, None):
            raise ConfigError("--launcher srun takes the layout from srun's tasks (one per GPU; rank SLURM_PROCID of "
                              "SLURM_STEP_NUM_TASKS), so it goes without --nproc-per-node, --nnodes, --node-rank and "
                              "--rdzv-endpoint")


def var_items(items: list[str]) -> dict[str, str]:
    """NAME=VALUE items of --var. List options split values at commas; a piece without `=` is glued back to
    the one before it, so that `train_data=/data/{a,b}.tar` keeps its comma."""
    joined: list[str] = []
    for item in items:
        if "=" in item or not joined:
            joined.append(item)
        else:
            joined[-1] += "," + item
    for item in joined:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ConfigError(f"--var takes NAME=VALUE, got {item!r}")
    return dict(item.split("=", 1) for item in joined)


def recipe_vars(cfg) -> dict[str, str]:
    """--var, --out and the smoke data's paths as recipe vars."""
    values = var_items(cfg.var)
    if getattr(cfg, "out", None):
        values["out"] = cfg.out
    if getattr(cfg, "smoke_data", None):
        values.update(smoke_vars(Path(cfg.smoke_data)))
    return values


def smoke_vars(data: Path) -> dict[str, str]:
    """The smoke variant's data: the CLIP demo's (make-demo-data) or the classification demo's
    (cls-make-demo-data, read as cifar100:DIR)."""
    info = data / "demo_info.json"
    if info.is_file():
        from ..demo.steps import DEMO_SUITE
        return {"smoke_data": str(data), "smoke_suite": str(DEMO_SUITE),
                "smoke_train_data": str(data / json.loads(info.read_text())["train_data"])}
    if (data / "cifar-100-python").is_dir():
        return {"smoke_data": str(data), "smoke_train_data": f"cifar100:{data}"}
    raise UserError(f"--smoke-data {data} holds no demo data: make it with `cifd-clip make-demo-data --out {data}` "
                    f"(CLIP recipes) or `cifd-clip cls-make-demo-data --out {data}` (classification recipes)")


def run(cfg: Config) -> int:
    from ..launch.recipe import load_recipe
    from ..launch.runner import Topology, run_recipe

    recipe = load_recipe(cfg.recipe, recipe_vars(cfg), smoke=cfg.smoke_data is not None)
    if cfg.launcher == "srun":
        topo = Topology.from_srun()
        print(f"launcher srun: task {topo.rank} of {topo.world_size}", flush=True)
    else:
        node_rank = cfg.node_rank if cfg.node_rank is not None else _env_node_rank()
        topo = Topology(cfg.nproc_per_node, cfg.nnodes, node_rank, cfg.rdzv_endpoint, cfg.rdzv_id).validate()
    return run_recipe(recipe, topo, only=cfg.steps, skip=cfg.skip, print_only=cfg.print_only)
