"""Run a recipe's steps in order: each step is one `cifd-clip STAGE --config OUT/launch/STEP.yaml`, launched
with torchrun when it runs on several processes, or as this rank's process under srun.

Launcher torchrun (the default), one `cifd-clip launch` per node:
- One node, N processes: `torchrun --standalone --nproc-per-node N -m -- cifd_clip STAGE ...`.
- Several nodes: every node runs the same `cifd-clip launch` with `--nnodes`, `--rdzv-endpoint` (c10d
  rendezvous, a fresh id per step) and its `--node-rank`; the output folder must be shared by all nodes.
  A step of one process runs on node 0; the other nodes wait for its done marker.
Launcher srun, one `cifd-clip launch --launcher srun` per srun task (one task per GPU, no torchrun):
- Every task runs each step as `cifd-clip STAGE ...`, one process that is one rank of the step (its rank and
  world size come from SLURM's variables, see engine/distributed.py). A step of one process runs on global
  rank 0; every other rank waits for rank 0's done marker after each step (so that the next step's ranks
  meet at MASTER_PORT only once rank 0's process of this step has let go of it).
Either way:
- A finished step leaves `OUT/launch/STEP.done`; running the recipe again skips it (resume after a
  pre-emption: the interrupted step resumes by itself: training steps carry `resume: latest`, embed skips
  the shards it finished). Delete the marker to run a step again.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ..errors import UserError
from .recipe import Recipe, Step

MARKER_SUFFIX, FAILED_SUFFIX = ".done", ".failed"


@dataclass
class Topology:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: Optional[str] = None
    rdzv_id: str = "cifd-clip"
    launcher: str = "torchrun"  # or "srun"
    rank: int = 0  # srun: this task's global rank (SLURM_PROCID) of world_size tasks
    world_size: int = 1

    def validate(self) -> "Topology":
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise UserError("--nproc-per-node and --nnodes must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node-rank must be between 0 and {self.nnodes - 1}, got {self.node_rank}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise UserError("a launch on several nodes needs --rdzv-endpoint HOST:PORT (the first node's address; "
                            "in a SLURM job: the first host of $SLURM_JOB_NODELIST)")
        return self

    @classmethod
    def from_srun(cls) -> "Topology":
        """This process as one srun task (a single task, or none, is rank 0 of 1)."""
        from ..engine.distributed import slurm_task
        task = slurm_task()  # a job step of several tasks without MASTER_ADDR stops here, before any step runs
        return cls(launcher="srun", rank=task.rank if task else 0, world_size=task.world_size if task else 1)

    @property
    def is_leader(self) -> bool:
        """Node 0 (torchrun) or global rank 0 (srun): runs the single-process steps and writes the markers."""
        return (self.rank if self.launcher == "srun" else self.node_rank) == 0

    @property
    def leader(self) -> str:
        return "rank 0" if self.launcher == "srun" else "node 0"


def state_dir(recipe: Recipe) -> Path:
    return recipe.out / "launch"


def write_step_config(recipe: Recipe, step: Step) -> Path:
    """The step's options as the stage's --config file (what the printed launch line reads)."""
    path = state_dir(recipe) / f"{step.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# cifd-clip {step.stage}: step {step.name!r} of {recipe.path} (written by `cifd-clip launch`)\n"
    text = header + yaml.safe_dump(step.options, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def launch_argv(step: Step, config_file: Path, topo: Topology) -> list[str]:
    """The command line of one step on this node."""
    stage_args = [step.stage, "--config", str(config_file)]
    if not uses_torchrun(step, topo):
        return [sys.executable, "-m", "cifd_clip", *stage_args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(topo.nproc_per_node)]
    if topo.nnodes == 1:
        torchrun += ["--standalone"]
    else:
        torchrun += ["--nnodes", str(topo.nnodes), "--node-rank", str(topo.node_rank), "--rdzv-backend", "c10d",
                     "--rdzv-endpoint", topo.rdzv_endpoint, "--rdzv-id", f"{topo.rdzv_id}-{step.name}"]
    # `--` keeps torchrun's parser from reading our options (--logs would be taken for its --logs-specs)
    return [*torchrun, "-m", "--", "cifd_clip", *stage_args]


def uses_torchrun(step: Step, topo: Topology) -> bool:
    return topo.launcher == "torchrun" and step.processes == "all" and topo.nnodes * topo.nproc_per_node > 1


def step_env(step: Step, topo: Topology) -> dict[str, str] | None:
    """The environment of the step's process (None: this one's). A step that runs as one process is told so
    with torchrun's variables for a world of one: inside an srun task of a step with several tasks (a node's
    task in slurm.sbatch) it would otherwise join SLURM's task layout (see engine/distributed.py)."""
    if uses_torchrun(step, topo) or (topo.launcher == "srun" and step.processes == "all"):
        return None
    return {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}


def shown(argv: list[str]) -> str:
    """The launch line as a user would type it."""
    if argv[:3] == [sys.executable, "-m", "cifd_clip"]:
        argv = ["cifd-clip", *argv[3:]]
    elif argv[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        argv = ["torchrun", *argv[3:]]
    return " ".join(shlex.quote(a) for a in argv)


def _marker(recipe: Recipe, step: Step, suffix: str = MARKER_SUFFIX) -> Path:
    return state_dir(recipe) / f"{step.name}{suffix}"


def is_done(recipe: Recipe, step: Step) -> bool:
    return _marker(recipe, step).is_file()


def _write_marker(recipe: Recipe, step: Step, argv: list[str], seconds: float, suffix: str) -> None:
    info = {"step": step.name, "stage": step.stage, "command": shown(argv), "seconds": round(seconds, 1),
            "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = _marker(recipe, step, suffix)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


def _wait_for_leader(recipe: Recipe, step: Step, topo: Topology, poll_s: float, since: float | None = None,
                     what: str = "runs on") -> None:
    done, failed = _marker(recipe, step), _marker(recipe, step, FAILED_SUFFIX)
    print(f"step {step.name}: {what} {topo.leader}; waiting for {done}", flush=True)
    started = (since or time.time()) - 1  # a failure marker older than this step is an earlier attempt's
    while not done.is_file():
        if failed.is_file() and failed.stat().st_mtime >= started:
            raise UserError(f"step {step.name} failed on {topo.leader} (see {failed} and {topo.leader}'s log)")
        time.sleep(poll_s)


def run_recipe(recipe: Recipe, topo: Topology, *, only: list[str] | None = None, skip: list[str] | None = None,
               print_only: bool = False, poll_s: float = 5.0) -> int:
    """Run (or with print_only, print) the selected steps; returns the exit code of the first failed step."""
    for name in [*(only or []), *(skip or [])]:
        recipe.step(name)  # an unknown name stops here, before anything runs
    steps = [s for s in recipe.steps if (not only or s.name in only) and s.name not in (skip or [])]
    for number, step in enumerate(steps, 1):
        head = f"[{number}/{len(steps)}] {step.name}"
        if print_only:  # the config files are written, so that every printed line runs as it is
            print(f"{head}: {shown(launch_argv(step, write_step_config(recipe, step), topo))}")
            continue
        if is_done(recipe, step):
            print(f"{head}: done earlier ({_marker(recipe, step)}), skipped", flush=True)
            continue
        if step.skip_if_exists and Path(step.skip_if_exists).exists():
            print(f"{head}: {step.skip_if_exists} exists, skipped", flush=True)
            continue
        if step.processes == "one" and not topo.is_leader:
            _wait_for_leader(recipe, step, topo, poll_s)
            continue
        argv = launch_argv(step, write_step_config(recipe, step), topo)
        if topo.is_leader:
            _marker(recipe, step, FAILED_SUFFIX).unlink(missing_ok=True)
        print(f"\n{head}: {shown(argv)}", flush=True)
        began, start = time.time(), time.perf_counter()
        code = subprocess.call(argv, env=step_env(step, topo))
        seconds = time.perf_counter() - start
        if code != 0:
            if topo.is_leader:
                _write_marker(recipe, step, argv, seconds, FAILED_SUFFIX)
            print(f"{head} failed with exit code {code} after {seconds:.0f} s; fix the cause and run the same "
                  f"command again (finished steps are skipped, this one resumes)", file=sys.stderr, flush=True)
            return code
        if topo.is_leader:
            _write_marker(recipe, step, argv, seconds, MARKER_SUFFIX)
        elif topo.launcher == "srun":  # the next step's ranks meet at the same MASTER_PORT as this one's
            _wait_for_leader(recipe, step, topo, poll_s, since=began, what="finishes on")
        print(f"{head} done in {seconds:.1f} s", flush=True)
    return 0
