"""The exported folder's README.md: a Hugging Face model card (YAML front matter: library, license, tags and the
metrics the student was evaluated on) whose paths are relative, so that the folder can be uploaded or moved."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import yaml

from ..evaluation.tasks import TASKS

TAGS = ["clip", "open_clip", "cifd_clip", "knowledge-distillation", "zero-shot-image-classification"]
HF_TASKS = {name: task.hf_task for name, task in TASKS.items()}


def _absolute_paths(value) -> list[str]:
    if isinstance(value, str):
        return [value] if os.path.isabs(value) else []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _absolute_paths(v)]
    return []


def portable(value, base: Optional[str]):
    """`value` with every absolute path in it made relative to `base` (just its name when there is no base)."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, base) if base else os.path.basename(value.rstrip("/")) or value
    if isinstance(value, dict):
        return {k: portable(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, base) for v in value]
    return value


def common_base(checkpoint, run_cfg: dict) -> Optional[str]:
    """The deepest folder holding the checkpoint and every absolute path of the run's config (None at the root)."""
    paths = [str(Path(checkpoint).resolve().parent)] + _absolute_paths(run_cfg)
    try:
        base = os.path.commonpath(paths)
    except ValueError:  # paths on different drives
        return None
    return None if base in ("/", "") else base


def checkpoint_metrics(eval_json: Optional[dict], checkpoint) -> list[dict]:
    """[{"task", "dataset", "type", "metrics": {name: value}}] of this checkpoint's column in a bench results.json."""
    if not eval_json:
        return []
    wanted = str(Path(checkpoint).resolve())
    specs = [str(Path(s).resolve()) if not s.startswith("local-dir:") else s for s in eval_json.get("models", [])]
    if wanted not in specs:
        return []
    out = []
    for result in eval_json["results"][specs.index(wanted)]:
        if result.get("status") != "ok":
            continue
        metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
        out.append({"task": result["task"], "dataset": result.get("label") or result["dataset"],
                    "type": result["dataset"], "metrics": metrics})
    return out


def front_matter(name: str, license: str, results: list[dict]) -> str:
    meta = {"library_name": "open_clip", "license": license, "tags": TAGS,
            "pipeline_tag": "zero-shot-image-classification"}
    if results:
        meta["model-index"] = [{"name": name, "results": [
            {"task": {"type": HF_TASKS.get(r["task"], r["task"])},
             "dataset": {"name": r["dataset"], "type": r["type"]},
             "metrics": [{"type": k, "name": f"{k} (%)", "value": round(100 * v, 2)} for k, v in r["metrics"].items()]}
            for r in results]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip() + "\n---\n"


def find_eval_json(eval_table_path: Optional[Path]) -> Optional[dict]:
    if eval_table_path is None:
        return None
    path = eval_table_path.with_name("results.json")
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
