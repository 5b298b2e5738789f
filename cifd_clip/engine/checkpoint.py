"""Training checkpoints: open_clip's dict, extended for exact resume, safe to load with weights_only.

Layout of a run: `<logs>/<name>/checkpoints/step_N.pt` (every --save-every-steps),
`epoch_N.pt` (each epoch end) and `epoch_latest.pt`, which always points at the newest of
them so that `--resume latest` continues from the last saved step, not just the last epoch.
Which of them stay on disk is retention.py's (--keep-step-checkpoints, --delete-previous-checkpoint,
--save-most-recent).
`state_dict` holds the student CLIP only (open_clip loads it with `pretrained=FILE`);
IBMs, projections and loss-module parameters go to `distill_state_dict`.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..file_io import write_atomic
from ..errors import UserError
from ..clip_models import read_checkpoint, strip_prefixes
from .retention import LATEST, Retention, checkpoint_step, to_delete

log = logging.getLogger(__name__)


def to_plain(obj: Any) -> Any:
    """Only tensors, str/int/float/bool/None and lists/dicts of them (what weights_only accepts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def rng_state() -> dict:
    """torch / numpy / python RNG states as tensors and plain lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def non_finite_tensors(state_dict: dict) -> list[str]:
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def build_checkpoint(*, epoch: int, step: int, name: str, model_name: str, model_cfg: dict,
                     preprocess_cfg: dict, state_dict: dict, distill_state_dict: dict,
                     optimizer: dict, scheduler: dict, scaler: Optional[dict], config: dict,
                     extra: Optional[dict] = None) -> dict:
    """The checkpoint dict of DEVELOPERS.md (epoch = epochs completed, step = optimizer steps done)."""
    ckpt = {
        "epoch": int(epoch),
        "step": int(step),
        "name": str(name),
        "model_name": str(model_name),
        "model_cfg": to_plain(model_cfg),
        "preprocess_cfg": to_plain(preprocess_cfg),
        "state_dict": strip_prefixes({k: v.detach().cpu() for k, v in state_dict.items()}),
        "distill_state_dict": strip_prefixes({k: v.detach().cpu() for k, v in distill_state_dict.items()}),
        "optimizer": to_plain(optimizer),
        "scheduler": to_plain(scheduler),
        "rng": rng_state(),
        "config": to_plain(config),
    }
    if scaler is not None:
        ckpt["scaler"] = to_plain(scaler)
    if extra:
        ckpt.update(to_plain(extra))
    return ckpt


def save_atomic(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write via a temp file and os.replace; refuses weights that are not finite."""
    bad = non_finite_tensors(ckpt["state_dict"]) + non_finite_tensors(ckpt.get("distill_state_dict", {}))
    if bad:
        raise UserError(f"refusing to save {path}: weight {bad[0]} holds NaN or inf")
    return write_atomic(path, lambda tmp: torch.save(ckpt, tmp))


def _point_latest(path: Path) -> None:
    latest = path.with_name(LATEST)
    tmp = path.with_name(f".{LATEST}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(path, tmp)  # cheap and atomic on the same file system
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, latest)


class CheckpointWriter:
    """Writes step_N.pt / epoch_N.pt, keeps epoch_latest.pt on the newest one (--save-most-recent) and, once a new
    file is complete, deletes what the retention rules no longer keep (retention.py)."""

    def __init__(self, run_dir: str | os.PathLike, steps_per_epoch: int = 1, retention: Retention = Retention()):
        self.folder = Path(run_dir) / "checkpoints"
        self.steps_per_epoch, self.retention = steps_per_epoch, retention

    def save_step(self, ckpt: dict) -> Path:
        return self._save(ckpt, f"step_{ckpt['step']}.pt")

    def save_epoch(self, ckpt: dict) -> Path:
        return self._save(ckpt, f"epoch_{ckpt['epoch']}.pt")

    def _save(self, ckpt: dict, name: str) -> Path:
        path = save_atomic(ckpt, self.folder / name)
        if self.retention.save_most_recent:
            _point_latest(path)
        elif (self.folder / LATEST).exists():  # left by an earlier invocation: it would name an older checkpoint
            (self.folder / LATEST).unlink()
        names = [p.name for p in self.folder.iterdir()]
        for old in to_delete(names, name, self.steps_per_epoch, self.retention):
            (self.folder / old).unlink(missing_ok=True)
            log.debug("retention: deleted %s", old)
        return path


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def resolve_resume(value: Optional[str], run_dir: str | os.PathLike, steps_per_epoch: Optional[int] = None
                   ) -> Optional[Path]:
    """`latest` → the run's newest checkpoint (None when there is none yet); a path → that file. Without
    epoch_latest.pt (--no-save-most-recent) the newest is the one of the most steps: by its name when the run's
    steps per epoch are known, else by the step each file records."""
    if not value:
        return None
    if value == "latest":
        folder = Path(run_dir) / "checkpoints"
        if (folder / LATEST).is_file():
            return folder / LATEST
        candidates = sorted(folder.glob("*.pt"), key=_natural_key) if folder.is_dir() else []
        if not candidates:
            return None
        if steps_per_epoch:
            named = [(found[0], found[1] == "epoch", p) for p in candidates
                     if (found := checkpoint_step(p.name, steps_per_epoch)) is not None]
            if named:
                return max(named, key=lambda t: t[:2])[2]
        # newest by recorded step, so step_120.pt wins over epoch_1.pt when it is later
        return max(candidates, key=lambda p: (read_checkpoint(p).get("step", -1), p.stat().st_mtime))
    path = Path(value)
    if not path.is_file():
        raise UserError(f"--resume {value}: no such checkpoint file")
    return path


def load_for_resume(path: str | os.PathLike) -> dict:
    ckpt = read_checkpoint(path)
    missing = [k for k in ("step", "state_dict", "optimizer") if k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a cifd_clip training checkpoint (no {missing[0]}); "
                        f"to start from its weights use --pretrained instead of --resume")
    return ckpt
