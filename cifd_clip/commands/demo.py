"""Run the whole pipeline on the built-in demo data and write a side-by-side report.

make-demo-data → train a teacher → embed → train-rdm (3 rates) → distill a CIFD student → train the
same student without distillation and with open_clip-style KD → bench all four → export the CIFD
student and reload it through open_clip. Each step is the `cifd-clip` stage a user would run, with its
settings from recipes/demo/STEP.yaml (printed before it runs, logged to OUT/logs/STEP.log).
Outputs: OUT/report/report.md (table, verdict, stage times), rate_distortion.png, training_curves.png.
`--scale small` runs a reduced version (recipes/demo/scale-small.yaml) in a few minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option


@dataclass
class Config:
    out: str = option("demo_out", "folder for everything the demo writes (replaced when it is an earlier demo's)")
    scale: str = option("full", "full: the README's demo; small: reduced sizes from recipes/demo/scale-small.yaml",
                        choices=["full", "small"])
    recipes: Optional[str] = option(None, "folder with one YAML per step (default: the checkout's recipes/demo)")
    stream: bool = option(True, "show each stage's own output on the terminal (it always goes to OUT/logs)")


def run(cfg: Config) -> int:
    import time
    from pathlib import Path

    from ..demo.execute import StepFailed, prepare_out, run_steps
    from ..demo.steps import Layout, build_steps, resolve_recipes

    recipes = resolve_recipes(cfg.recipes)
    steps = build_steps(recipes, cfg.scale)
    layout = Layout(Path(cfg.out))
    prepare_out(layout.out)
    start = time.perf_counter()
    try:
        timings, commands = run_steps(steps, lambda step: step.argv(layout, recipes), layout.logs, stream=cfg.stream)
    except StepFailed:
        return 1

    from ..demo.report import write_report
    from ..export.open_clip_folder import verify_export

    check_start = time.perf_counter()
    diff = verify_export(layout.export, layout.checkpoint("student-cifd"))
    timings.append(("reload check", "(open_clip.create_model_and_transforms on the export)",
                    time.perf_counter() - check_start))
    shown = write_report(layout, timings, scale=cfg.scale, commands=commands, export_diff=diff)
    print("\n" + shown["table"] + "\n\nstudent queries against the teacher's index:\n" + shown["teacher_space"]
          + "\n\n" + shown["stages"] + "\n")
    for sentence in shown["verdict"]:
        print(sentence)
    print(f"\nexported CIFD student reloads through open_clip (local-dir:{layout.export}), "
          f"max abs embedding difference {diff:.1e}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; report: {layout.report / 'report.md'}")
    return 0
