"""Run one demo step as its own `cifd-clip` process, logging to a file and timing it."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError

MARKER = ".cifd_clip_demo"
OUTPUT_FOLDERS = ("data", "cache", "runs", "bench", "bench-teacher-space", "export", "logs", "report")


def prepare_out(out: Path) -> None:
    """Make --out ready: new or empty, or an earlier demo's folder (whose outputs are replaced)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"--out {out} is not empty and was not written by the demo; pick a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    (out / MARKER).write_text("written by `cifd-clip demo`; its outputs are replaced when the demo runs again\n")


def command_line(argv: list[str]) -> str:
    return "cifd-clip " + " ".join(shlex.quote(a) for a in argv)


def run_step(argv: list[str], log_file: Path, *, stream: bool) -> tuple[int, float]:
    """Run `python -m cifd_clip ARGV`; its output goes to log_file (and the terminal when stream)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "wb") as log:
        log.write(f"$ {command_line(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen([sys.executable, "-m", "cifd_clip", *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        try:
            for chunk in iter(lambda: process.stdout.read1(4096), b""):
                log.write(chunk)
                if stream:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            code = process.wait()
        except BaseException:  # Ctrl-C: stop the stage too instead of leaving it running
            process.kill()
            process.wait()
            raise
    return code, time.perf_counter() - start


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class StepFailed(Exception):
    """A demo step exited non-zero; the driver has printed where to look."""


def run_steps(steps, argv_of, logs: Path, *, stream: bool) -> tuple[list, list]:
    """Run each step as its own `cifd-clip` process (printed first, logged to LOGS/STEP.log, timed).
    Returns (timings [(name, stage, seconds)], command lines); raises StepFailed after printing the failure."""
    timings, commands = [], []
    for number, step in enumerate(steps, 1):
        argv = argv_of(step)
        commands.append(command_line(argv))
        print(f"\n[{number}/{len(steps)}] {step.name}: {commands[-1]}", flush=True)
        log_file = logs / f"{step.name}.log"
        code, seconds = run_step(argv, log_file, stream=stream)
        if code != 0:
            print(f"\n{tail(log_file)}\n\ndemo stopped: step '{step.name}' failed with exit code {code} after "
                  f"{seconds:.0f} s; its full output is in {log_file}", flush=True)
            raise StepFailed(step.name)
        timings.append((step.name, step.stage, seconds))
        print(f"[{number}/{len(steps)}] {step.name} done in {seconds:.1f} s", flush=True)
    return timings, commands
