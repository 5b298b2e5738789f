"""Seed spread of a demo's students: rerun the demo's own student commands with more seeds.

    cifd-clip demo --out demo_out                                        # the CLIP demo (seed 0)
    python studies/demo_seeds.py --demo demo_out --seeds 1 2 3 4         # -> docs/studies/clip-demo-seeds.md
    cifd-clip cls-demo --out cls_demo_out                                # the classification demo (seed 0)
    python studies/demo_seeds.py --demo cls_demo_out --seeds 1 2 3 4     # -> docs/studies/cls-demo-seeds.md

The finished demo's teacher, cache and RDMs (and assistant) are shared; each student command is the demo's own
(from its report) with `--seed S --name STEP-sS`. A CLIP student is scored on the demo's zero-shot and retrieval
sets (studies/clip_cifd.py's evaluation, the student's own space), a classifier on its test set. Writes a page
with every run's numbers, mean ± std over the demo's seed 0 and the given seeds, and the commands. A finished
run is reused when the study is rerun.
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
sys.path.insert(0, str(REPO / "studies"))

from cifd_clip.demo.cls_steps import STUDENTS as CLS_STUDENTS  # noqa: E402
from cifd_clip.demo.execute import command_line, run_step, tail  # noqa: E402
from cifd_clip.demo.steps import MODELS  # noqa: E402

CLIP_STUDENTS = [(run, label) for run, label in MODELS if run.startswith("student-")]


def report_commands(demo: Path) -> list[list[str]]:
    """Every command the demo ran (argv without `cifd-clip`), as its report lists them."""
    report = (demo / "report" / "report.md").read_text()
    lines = report.split("## Commands run")[1].split("```")[1].strip().splitlines()
    return [shlex.split(line)[1:] for line in lines]


def run_name(argv: list[str]) -> str:
    return argv[argv.index("--name") + 1] if "--name" in argv else ""  # embed, RDM and export steps have none


def student_commands(demo: Path) -> dict:
    """The demo's student commands, by run name."""
    return {run_name(argv): argv for argv in report_commands(demo) if run_name(argv).startswith("student-")}


def is_classification(demo: Path) -> bool:
    return "classification demo" in (demo / "report" / "report.md").read_text().splitlines()[0]


def scores(demo: Path, run: str, classification: bool) -> dict:
    run_dir = demo / "runs" / run
    if classification:
        return {"top-1": json.loads((run_dir / "summary.json").read_text())["eval"]["val"]["metrics"]["acc1"]}
    kept = run_dir / "seed_study.json"
    if not kept.is_file():
        import clip_cifd
        kept.write_text(json.dumps(clip_cifd.evaluate_run(run_dir, demo / "data", False)["W"]))
    result = json.loads(kept.read_text())
    return {"zero-shot top-1": result["acc1"], "mean retrieval recall": result["mean_recall"]}


def mean_std(values: list[float]) -> str:
    pct = [100 * v for v in values]
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f}" if len(pct) > 1 else f"{pct[0]:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="a finished `cifd-clip demo` or `cifd-clip cls-demo` folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--page", default=None, help="markdown page to write (default: docs/studies/"
                                                     "clip-demo-seeds.md or cls-demo-seeds.md)")
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    classification = is_classification(demo)
    students = CLS_STUDENTS if classification else CLIP_STUDENTS
    commands = student_commands(demo)
    seeds = [0, *args.seeds]
    runs: dict = {}  # label -> [(seed, scores, command)]
    for run, label in students:
        runs[label] = [(0, scores(demo, run, classification), command_line(commands[run]))]
        for seed in args.seeds:
            name = f"{run}-s{seed}"
            argv_s = list(commands[run])
            argv_s[argv_s.index("--name") + 1] = name
            argv_s += ["--seed", str(seed)]
            if not (demo / "runs" / name / "summary.json").is_file():
                code, _ = run_step(argv_s, demo / "logs" / f"{name}.log", stream=False)
                if code != 0:
                    print(tail(demo / "logs" / f"{name}.log"))
                    return 1
            runs[label].append((seed, scores(demo, name, classification), command_line(argv_s)))
    metrics = list(runs[students[0][1]][0][1])
    kind = "classification demo (`cifd-clip cls-demo`)" if classification else "CLIP demo (`cifd-clip demo`)"
    lines = [f"# Study: the seed spread of the {kind}", "",
             f"Written by `python studies/demo_seeds.py --demo DEMO --seeds {' '.join(map(str, args.seeds))}` on a "
             f"finished full-scale demo: the demo's own student commands (its report lists them) with seeds "
             f"{', '.join(map(str, seeds))}, sharing the demo's teacher, cache and RDMs. Every run is listed; mean ± "
             "std over seeds (the seed sets the student's initialisation and data order).", "",
             "| student | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for label, rows in runs.items():
        lines.append(f"| {label} | " + " | ".join(mean_std([r[1][m] for r in rows]) for m in metrics) + " |")
    lines += ["", "## Every run", "", "| student | seed | " + " | ".join(metrics) + " | command |",
              "|---|---:|" + "---:|" * len(metrics) + "---|"]
    for label, rows in runs.items():
        for seed, values, command in rows:
            command = command.replace(str(demo.resolve()), "DEMO").replace(str(demo), "DEMO").replace(f"{REPO}/", "")
            lines.append(f"| {label} | {seed} | " + " | ".join(f"{100 * values[m]:.1f}" for m in metrics) +
                         f" | `{command}` |")
    page = Path(args.page) if args.page else \
        REPO / "docs" / "studies" / ("cls-demo-seeds.md" if classification else "clip-demo-seeds.md")
    page.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6 + len(runs)]))
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
