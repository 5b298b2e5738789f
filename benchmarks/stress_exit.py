"""How often a finished two-rank gloo run is killed at exit: the interpreter's own shutdown against end_process.

A gloo worker thread releases a collective's tensors a moment after the caller's wait returns; if that falls
after the interpreter began to shut down, the process dies with SIGABRT ("terminate called without an active
exception") although its work is done (cifd_clip/engine/distributed.py, end_process). The race needs a busy
machine, so this script can start busy-loop processes beside the runs (--busy). Each round runs the same
two-rank worker twice under torchrun, once ending plainly and once through end_process, alternating:

    .venv/bin/python benchmarks/stress_exit.py --rounds 60 --busy 4

prints how many runs of each ending failed and writes benchmarks/results/stress_exit.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENDINGS = ("plain", "end_process")


def worker(ending: str) -> None:
    """Model broadcast, 40 all-reduced gradient steps, rank 0 busy for a second, barrier, destroy, exit."""
    import torch
    import torch.distributed as dist

    from cifd_clip.engine.distributed import cleanup, end_process, init_distributed

    torch.set_num_threads(1)
    env = init_distributed("cpu")
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    for p in model.parameters():
        dist.broadcast(p.data, src=0)
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(40):
        x = torch.randn(64, 64)
        optimizer.zero_grad()
        ((model(x) - x) ** 2).mean().backward()
        dist.all_reduce(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        optimizer.step()
    dist.all_reduce(torch.ones(1))
    if env.is_main:  # as train-rdm's rank 0 evaluates while the others wait at the barrier
        end, x = time.time() + 1.0, torch.randn(300, 300)
        while time.time() < end:
            x = (x @ x).tanh()
    dist.barrier()
    cleanup(env)
    if ending == "end_process":
        end_process(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(ending: str) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           __file__, "--worker", ending]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    aborted = "SIGABRT" in proc.stderr or "terminate called" in proc.stderr
    return proc.returncode == 0, "aborted" if aborted else f"exit {proc.returncode}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="runs of each ending")
    parser.add_argument("--busy", type=int, default=4, help="busy-loop processes beside the runs")
    parser.add_argument("--worker", choices=ENDINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    failures = {ending: [] for ending in ENDINGS}
    try:
        for i in range(args.rounds):
            for ending in ENDINGS:
                ok, why = run_once(ending)
                if not ok:
                    failures[ending].append({"round": i, "why": why})
            print(f"round {i + 1}/{args.rounds}: failed so far "
                  + ", ".join(f"{e} {len(f)}" for e, f in failures.items()), flush=True)
    finally:
        for p in busy:
            p.kill()
    print(f"\n| ending | runs | failed | aborted |\n|---|---:|---:|---:|")
    for ending, failed in failures.items():
        print(f"| {ending} | {args.rounds} | {len(failed)} | {sum(f['why'] == 'aborted' for f in failed)} |")
    out = HERE / "results" / "stress_exit.json"
    out.write_text(json.dumps({"rounds": args.rounds, "busy": args.busy, "failures": failures}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
