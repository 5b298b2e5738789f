"""Export a student checkpoint as an open_clip `local-dir` folder (+ a bare state_dict .pt and a model card).

The folder loads with `open_clip.create_model_and_transforms("local-dir:OUT")` and with
CLIP_benchmark's `--model local-dir:OUT`; nothing but the student is kept, and nothing touches
the network.
"""
from dataclasses import dataclass
from typing import Optional

from ..config import option, required


@dataclass
class Config:
    checkpoint: str = required("a checkpoint written by `cifd-clip train` or `cifd-clip distill`")
    out: str = required("output folder")
    eval_results: Optional[str] = option(None, "results.md (or the folder) of `cifd-clip bench` for the model card; "
                                               "by default the run's eval/results.md when present")
    verify: bool = option(True, "reload the folder through open_clip and check it reproduces the checkpoint")
    overwrite: bool = option(False, "replace an earlier export in --out (its files are removed first)")


def run(cfg: Config) -> int:
    from ..export.open_clip_folder import export_student, verify_export

    out = export_student(cfg.checkpoint, cfg.out, cfg.eval_results, overwrite=cfg.overwrite)
    message = f"exported {cfg.checkpoint} to {out} (load with open_clip: local-dir:{out})"
    if cfg.verify:
        diff = verify_export(out, cfg.checkpoint)
        message += f"; open_clip reload matches, max abs difference {diff:.1e}"
    print(message)
    return 0
