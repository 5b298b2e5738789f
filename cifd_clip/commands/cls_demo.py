"""The classification path end to end on built-in data: teacher, assistant, RDMs, five students, one report.

cls-make-demo-data → cls-train a cnn8 teacher → cls-distill a cnn4 assistant → cls-embed → cls-train-rdm →
cnn2 students with no KD, KD, TAKD, DGKD and CIFD, each the `cifd-clip` command a user would run (settings in
the package's demo/recipes_classification/STEP.yaml, printed and logged to OUT/logs/STEP.log).
Report: OUT/report/report.md (table, verdict with relative training cost, RDM curve, validation curves).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class Config:
    out: str = option("cls_demo_out", "folder for everything the demo writes (replaced when it is an earlier demo's)")
    scale: str = option("full", "full (about 10 minutes on 2 CPU cores) or small (the test suite's)",
                        choices=["full", "small"])
    stream: bool = option(True, "show each stage's own output on the terminal (it always goes to OUT/logs)")


def run(cfg: Config) -> int:
    import time
    from pathlib import Path

    from ..demo.cls_steps import RECIPES, ClsLayout, build_steps
    from ..demo.cls_report import write_report
    from ..demo.execute import StepFailed, prepare_out, run_steps

    layout = ClsLayout(Path(cfg.out))
    steps = build_steps(RECIPES, cfg.scale)
    prepare_out(layout.out)
    start = time.perf_counter()
    try:
        timings, commands = run_steps(steps, lambda step: step.argv(layout, RECIPES), layout.logs, stream=cfg.stream)
    except StepFailed:
        return 1
    shown = write_report(layout, timings, scale=cfg.scale, commands=commands)
    print("\n" + shown["table"] + "\n")
    for sentence in shown["verdict"]:
        print(sentence)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; report: {layout.report / 'report.md'}")
    return 0
