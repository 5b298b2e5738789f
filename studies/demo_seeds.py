"""Seed spread of the classification demo's students: rerun its five student commands with more seeds.

    cifd-clip cls-demo --out cls_demo_out                      # teacher, assistant, cache, RDMs, seed 0
    python studies/cls_demo_seeds.py --demo cls_demo_out --seeds 1 2

The teacher, the assistant, the cache and the RDMs of the finished demo are shared; each student command is
the demo's own (from its report) with `--seed S --name STEP-sS`. Prints a markdown table: every run's val
top-1 and mean ± std over the demo's seed 0 and the given seeds.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifd_clip.demo.cls_plan import STUDENTS  # noqa: E402
from cifd_clip.demo.execute import run_step, tail  # noqa: E402


def student_commands(demo: Path) -> dict:
    """The demo's student commands, as its report lists them."""
    report = (demo / "report" / "report.md").read_text()
    commands = report.split("## Commands run")[1].split("```")[1].strip().splitlines()
    out = {}
    for line in commands:
        argv = shlex.split(line)[1:]  # drop "cifd-clip"
        name = argv[argv.index("--name") + 1] if "--name" in argv else ""  # embed and RDM steps have none
        if name.startswith("student-"):
            out[name] = argv
    return out


def val_top1(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["eval"]["val"]["metrics"]["acc1"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="a finished `cifd-clip cls-demo` output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    commands = student_commands(demo)
    rows = []
    for run, label in STUDENTS:
        scores = [val_top1(demo / "runs" / run)]
        for seed in args.seeds:
            name = f"{run}-s{seed}"
            if not (demo / "runs" / name / "summary.json").is_file():
                argv = list(commands[run])
                argv[argv.index("--name") + 1] = name
                argv += ["--seed", str(seed)]
                code, _ = run_step(argv, demo / "logs" / f"{name}.log", stream=False)
                if code != 0:
                    print(tail(demo / "logs" / f"{name}.log"))
                    return 1
            scores.append(val_top1(demo / "runs" / name))
        rows.append((label, scores))
    seeds = [0, *args.seeds]
    print("| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |")
    print("|---|" + "---:|" * (len(seeds) + 1))
    for label, scores in rows:
        pct = [100 * s for s in scores]
        print(f"| {label} | " + " | ".join(f"{p:.1f}" for p in pct) +
              f" | {statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
