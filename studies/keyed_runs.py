"""What the gap studies share: set-up steps made once per recipe and student runs kept per command.

A step's done-marker and a run's result file hold the hash of its command, so rerunning a study redoes exactly
the steps and runs whose command changed (a changed recipe, a new row) and reuses everything else.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from cifd_clip.demo.execute import command_line, run_step, tail


def command_key(argv: list[str]) -> str:
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]


def run_setup(out: Path, steps: list[tuple[str, list[str]]], *, overwrite: Callable[[str], bool]) -> None:
    """Each step once per command. A training step's stale run folder is removed first; a step for which
    `overwrite(name)` holds (caches, RDMs) gets `--overwrite`."""
    (out / "setup").mkdir(parents=True, exist_ok=True)
    for name, argv in steps:
        done = out / "setup" / f"{name}.done"
        if done.is_file() and json.loads(done.read_text()).get("key") == command_key(argv):
            continue
        print(f"[setup] {command_line(argv)}", flush=True)
        log = out / "setup" / f"{name}.log"
        if "--name" in argv:
            shutil.rmtree(out / "runs" / argv[argv.index("--name") + 1], ignore_errors=True)
        code, seconds = run_step([*argv, "--overwrite"] if overwrite(name) else argv, log, stream=False)
        if code != 0:
            raise SystemExit(f"set-up step {name} failed (exit {code}); see {log}:\n{tail(log)}")
        done.write_text(json.dumps({"key": command_key(argv), "seconds": round(seconds, 1)}) + "\n")


def setup_seconds(out: Path) -> dict:
    return {f.stem: json.loads(f.read_text())["seconds"] for f in (out / "setup").glob("*.done")}


def run_student(out: Path, name: str, argv: list[str], record: dict, evaluate: Callable[[Path], dict]) -> dict:
    """Run one student command (unless its result for this very command is kept) and evaluate it."""
    result_file = out / "results" / f"{name}.json"
    key = command_key(argv)
    if result_file.is_file():
        saved = json.loads(result_file.read_text())
        if saved.get("key") == key:
            return saved
    log = out / "logs" / f"{name}.log"
    if (out / "runs" / name).exists():  # a run left by an interrupted or changed study: start it again
        shutil.rmtree(out / "runs" / name)
    code, seconds = run_step(argv, log, stream=False)
    result = {**record, "command": command_line(argv), "exit_code": code, "train_seconds": round(seconds, 1),
              "key": key}
    if code == 0:
        try:
            result.update(evaluate(out / "runs" / name))
        except Exception as e:  # a run that trained but cannot be scored is a failed run, not the study's end
            result.update(exit_code=-1, error=f"evaluation failed: {type(e).__name__}: {e}")
    else:
        result["error"] = tail(log, 5)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def study_parser(doc: str, page: str):
    """The options every gap study takes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, help="working folder (data, runs, logs, results.json)")
    parser.add_argument("--quick", action="store_true", help="a few tiny runs, one seed (the test suite)")
    parser.add_argument("--jobs", type=int, default=2, help="student runs in parallel (one CPU thread each)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these configurations")
    parser.add_argument("--page", default=None, help=f"markdown page (default docs/studies/{page}; with --quick "
                                                     f"OUT/{page})")
    return parser


def set_up_then_run(setup: Callable[[], None], jobs: list, train: Callable, describe: Callable[[dict], str],
                    workers: int) -> list[dict]:
    """The set-up steps with every core each (unless OMP_NUM_THREADS says otherwise), then the student runs
    `workers` at a time with one thread each; prints one line per finished run, in job order."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    setup()
    os.environ["OMP_NUM_THREADS"] = threads or ("1" if workers > 1 else str(os.cpu_count() or 1))
    results = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(train, *job) for job in jobs]
        for job, future in zip(jobs, futures):
            results.append(future.result())
            print(f"[{len(results)}/{len(jobs)}] {results[-1]['config']}-s{results[-1]['seed']}: "
                  f"{describe(results[-1])}", flush=True)
    return results
