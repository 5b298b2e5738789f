"""Distributed set-up as a pure function of the environment a launcher leaves behind.

`init_distributed()` works the same with or without a launcher:
- torchrun: RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/MASTER_PORT) from torchrun; unchanged whenever they are set.
- srun with one task per GPU, no torchrun (as open_clip_train documents): SLURM_PROCID, SLURM_STEP_NUM_TASKS
  and SLURM_LOCALID give the rank, world size and local rank; MASTER_ADDR (the job's first host) must be
  exported, MASTER_PORT defaults to 29500. Only a job step of several tasks counts (srun sets
  SLURM_STEP_NUM_TASKS): a one-task job, an interactive `salloc` shell, or the batch script itself (where
  SLURM_NTASKS and SLURM_PROCID=0 are set too, but no other rank will ever start) runs alone, as without SLURM.
- neither: world size 1, no process group.
gloo on CPU, nccl on CUDA (as open_clip_train).
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {value!r}") from None


TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class SlurmTask:
    """This process as one rank of an srun job step with several tasks (one task per GPU, no torchrun)."""
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    @property
    def init_method(self) -> str:
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr  # an IPv6 address
        return f"tcp://{host}:{self.master_port}"


def slurm_task() -> SlurmTask | None:
    """The rank srun gave this process, or None: torchrun's variables are set (torchrun decides), SLURM
    describes no task, or the job step has one task (a one-task job, an `salloc` shell: the run is alone)."""
    if any(name in os.environ for name in TORCHRUN_VARS) or "SLURM_PROCID" not in os.environ:
        return None
    # the job step's task count, which only srun sets: the batch script also has SLURM_NTASKS (the job's) and
    # SLURM_PROCID=0, and a group formed there would wait for ranks that never start
    world_size = _env_int("SLURM_STEP_NUM_TASKS", 1)
    if world_size <= 1:
        return None
    rank, local_rank = _env_int("SLURM_PROCID", 0), _env_int("SLURM_LOCALID", 0)
    if not 0 <= rank < world_size:
        raise UserError(f"SLURM_PROCID={rank} is not a rank of SLURM_STEP_NUM_TASKS={world_size} tasks")
    if not os.environ.get("MASTER_ADDR"):
        raise UserError(f"this is task {rank} of {world_size} of an srun job step, and its ranks meet at "
                        f"MASTER_ADDR, which is not set: export MASTER_ADDR=$(scontrol show hostnames "
                        f"\"$SLURM_JOB_NODELIST\" | head -n 1) before srun (recipes/launch/slurm-srun.sbatch does), "
                        f"and MASTER_PORT if {DEFAULT_MASTER_PORT} is taken")
    return SlurmTask(rank, local_rank, world_size, os.environ["MASTER_ADDR"],
                     _env_int("MASTER_PORT", DEFAULT_MASTER_PORT))


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """`auto` picks this process's GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was asked for but this machine has no usable CUDA GPU")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or srun (SLURM_PROCID/SLURM_STEP_NUM_TASKS/
    SLURM_LOCALID) describes, or run alone."""
    task = slurm_task()
    if task is not None:
        return _init_slurm(task, device)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistEnv(0, 0, 1, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    _joined_a_group()
    return DistEnv(rank, local_rank, world_size, dev, backend)


def _init_slurm(task: SlurmTask, device: str) -> DistEnv:
    # --gpus-per-task=1 shows each task only its own GPU (cuda:0); --gpus-per-node shows all of the node's
    gpu = task.local_rank % max(torch.cuda.device_count(), 1)
    dev = resolve_device(device, gpu)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=task.init_method, rank=task.rank,
                                world_size=task.world_size)
    _joined_a_group()
    return DistEnv(task.rank, task.local_rank, task.world_size, dev, backend)


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_max(env: DistEnv, value: float) -> float:
    """The largest `value` over all ranks (used so that every rank takes the same decision)."""
    if not (env.distributed and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_mean(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is untouched)."""
    if not (env.distributed and dist.is_initialized()):
        return tensor.clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / env.world_size


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


_JOINED = False


def _joined_a_group() -> None:
    global _JOINED
    _JOINED = True


def end_process(code: int) -> NoReturn:
    """Exit with `code`; a process that joined a process group skips the interpreter's own shutdown.

    Why: a collective's gloo worker thread releases the collective's tensors a moment after the caller's wait
    returns, and releasing a tensor Python knows takes the GIL. If that moment falls after the interpreter began
    to shut down, Python ends the thread inside C++ code and the process dies with SIGABRT ("terminate called
    without an active exception"): a finished, successful run reported as failed by torchrun. So the work
    shutdown would do is done here (Python threads joined, atexit handlers run, which flush and close the log
    handlers, output flushed), then os._exit.
    """
    if not _JOINED:
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to flush into
            pass
    os._exit(code)
