"""Experiment trackers (`--report-to tensorboard,wandb`, open_clip_train's option and tag names).

The main process sends each metrics.jsonl line to the trackers asked for: training lines as `train/<name>`
(`train/loss`, `train/lr`, `train/samples_per_second`, `train/grad_norm`, every loss term by its name), evaluation
results during training as `val/<dataset>/<metric>` (CLIP_benchmark's metric names: `val/imagenet/acc1`), both
at the run's optimizer step (`val/epoch` beside them). TensorBoard writes `<run folder>/tensorboard/`; wandb starts a run named as ours
(its id too, so that a resumed run continues it) with the run's whole config, in `<run folder>/wandb/`; with
`WANDB_MODE=offline` nothing leaves the machine (`wandb sync` uploads it later). Both are optional extras:
`pip install 'cifd_clip[tensorboard]'` / `'cifd_clip[wandb]'`; asking for one that is not installed is refused
before anything runs. This module imports neither until a run starts one.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, UserError

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb")
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # what must be importable
_RENAMES = {"samples_per_s": "samples_per_second"}  # our metrics.jsonl names -> open_clip_train's tags
_NOT_TAGS = ("step",)


def parse_report_to(value: str) -> list[str]:
    """`tensorboard`, `wandb`, `tensorboard,wandb`, `all` or `none` (or empty) -> the trackers, in a fixed order."""
    items = [v.strip().lower() for v in str(value or "").replace(" ", ",").split(",") if v.strip()]
    if "all" in items:
        return list(TRACKERS)
    items = [i for i in items if i != "none"]
    bad = [i for i in items if i not in TRACKERS]
    if bad:
        raise ConfigError(f"--report-to {value}: {bad[0]!r} is not a tracker (give tensorboard, wandb, "
                          f"tensorboard,wandb, all or none)")
    return [t for t in TRACKERS if t in items]


def check_installed(names: list[str]) -> None:
    """One sentence naming the extra to install for a tracker whose package is missing."""
    for name in names:
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise UserError(f"--report-to {name} needs the {name} package, which is not installed: "
                            f"pip install 'cifd_clip[{name}]' (or pip install {name})")


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def train_tags(record: dict) -> dict:
    """A metrics.jsonl training line as open_clip_train's `train/` scalars."""
    out = {}
    for key, value in record.items():
        number = _number(value)
        if key not in _NOT_TAGS and number is not None:
            out[f"train/{_RENAMES.get(key, key)}"] = number
    return out


def val_tags(results: dict) -> dict:
    """Evaluation results ({dataset: the result, whose `metrics` are the numbers}) as `val/<dataset>/<metric>`
    scalars; the classification stages' own validation split (`val`) as `val/<metric>`."""
    out = {}
    for dataset, result in results.items():
        if not isinstance(result, dict):
            continue
        metrics = result.get("metrics", result)
        prefix = "val" if dataset == "val" else f"val/{dataset}"
        for metric, value in (metrics.items() if isinstance(metrics, dict) else ()):
            if (number := _number(value)) is not None:
                out[f"{prefix}/{metric}"] = number
    return out


def rdm_val_results(rows: list, teacher: Optional[dict] = None) -> dict:
    """An RDM report's rows ({modality, rate_weight, metrics...}) as val_tags' input: `val/<modality>/R=<R>/...`,
    and the teacher's own figures as `val/teacher/...`."""
    results = {f"{row['modality']}/R={row['rate_weight']:g}": {k: v for k, v in row.items()
                                                            if k not in ("modality", "rate_weight")} for row in rows}
    if teacher:
        results["teacher"] = dict(teacher)
    return results


def wandb_id(name: str) -> str:
    """wandb's run id from our run name (its allowed characters only), as open_clip_train uses --name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:128] or "run"


def wandb_mode() -> Optional[str]:
    """WANDB_MODE as this run finds it: wandb reads the environment once per process and keeps it, so a process
    that runs several stages (a test session) would otherwise start every later run in the first one's mode."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode) if mode in (
        "online", "offline", "disabled", "dryrun", "run") else None


class Trackers:
    """The trackers of one run (main process only); `Trackers([])` does nothing."""

    def __init__(self, names: list[str], run_dir: Path | str = ".", run_name: str = "", config: Optional[dict] = None,
                 project: str = "cifd-clip", resume: bool = False):
        self.names = list(names)
        self.tb = None
        self.wandb_run = None
        run_dir = Path(run_dir)
        if "tensorboard" in self.names:
            check_installed(["tensorboard"])
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if "wandb" in self.names:
            check_installed(["wandb"])
            import wandb
            try:
                self.wandb_run = wandb.init(project=project, name=run_name or None, id=wandb_id(run_name or "run"),
                                            dir=str(run_dir), config=config or {},
                                            resume="allow" if resume else None, mode=wandb_mode(),
                                            settings=wandb.Settings(console="off"))
            except Exception as e:  # not logged in, no network without WANDB_MODE=offline, a bad project name
                self.close()
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"--report-to wandb could not start a wandb run ({first}); log in with `wandb login` "
                                f"or set WANDB_MODE=offline to keep the run on this machine") from None
        if self.names:
            log.info("reporting to %s", ", ".join(self.names))

    def log(self, scalars: dict, step: int) -> None:
        if not scalars:
            return
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({**scalars, "step": step}, step=step)

    def log_train(self, record: dict) -> None:
        if "step" in record:
            self.log(train_tags(record), int(record["step"]))

    def log_val(self, results: dict, step: int, epoch: Optional[int] = None) -> None:
        scalars = val_tags(results)
        if scalars and epoch is not None:
            scalars["val/epoch"] = float(epoch)
        self.log(scalars, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
