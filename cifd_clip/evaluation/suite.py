"""Run several models over a benchmark suite and write per-run JSONs, results.json and results.md.

A suite (YAML, see eval/suites/) lists datasets:
    name: paper
    dataset_root_base: data            # optional; what `{root}` means unless the caller says
    datasets:
      - name: imagenet1k               # any name build_dataset accepts
        task: zeroshot_classification  # optional: the dataset's own task; or cross_model_retrieval /
                                       # cross_model_classification (bench --gallery-model TEACHER)
        root: "{root}/imagenet"
        label: ImageNet                # optional: the name shown in the table
        recall_k: [1, 5, 10]           # retrieval only (default 1 5 10)
        options: {border_crop: 2}      # optional build_dataset options
A dataset not on disk is reported as missing (with the path looked in); it never stops the suite.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import ConfigError, UserError
from .datasets import canonical_name, default_task
from .tasks import CLASSIFICATION, CROSS_TASKS, DEFAULT_RECALL_K, TASKS, metric_rows

log = logging.getLogger(__name__)
ENTRY_KEYS = {"name", "task", "root", "label", "recall_k", "options"}


def slug(text: str) -> str:
    text = str(text).replace("local-dir:", "").rstrip("/")
    if "/" in text and not text.startswith(("wds/", "folder/")):
        text = Path(text).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


SHIPPED_SUITES = Path(__file__).resolve().parent / "suites"


def load_suite(suite: Union[dict, str, Path]) -> dict:
    """Read and check a suite (a dict or a YAML file); returns {"name", "dataset_root_base", "datasets"}."""
    if not isinstance(suite, dict):
        from ..config import read_yaml
        path = Path(suite)
        if not path.suffix and not path.exists() and (SHIPPED_SUITES / f"{path.name}.yaml").is_file():
            path = SHIPPED_SUITES / f"{path.name}.yaml"  # `--suite paper`: a suite that ships with the package
        suite = {"name": path.stem, **read_yaml(path)}
    where = f"suite {suite.get('name', '?')}"
    entries = suite.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where} must list its datasets under 'datasets:'")
    checked = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or "root" not in entry:
            raise ConfigError(f"dataset entry {i + 1} of {where} needs at least 'name' and 'root'")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise ConfigError(f"dataset entry {entry['name']} of {where} has unknown key(s) {sorted(unknown)}; "
                              f"allowed: {sorted(ENTRY_KEYS)}")
        name = canonical_name(entry["name"])
        default_task(name)  # unknown names fail now, not halfway through the suite
        task = entry.get("task")
        if task is not None and task not in TASKS:
            raise ConfigError(f"dataset entry {name} of {where} has unknown task {task!r}; use one of "
                              f"{', '.join(TASKS)}")
        recall_k = entry.get("recall_k", list(DEFAULT_RECALL_K))
        if not isinstance(recall_k, list) or not all(isinstance(k, int) and k >= 1 for k in recall_k):
            raise ConfigError(f"dataset entry {name} of {where}: recall_k must be a list of positive integers")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"dataset entry {name} of {where}: options must be a mapping")
        checked.append({"name": name, "task": task, "root": str(entry["root"]), "label": str(entry.get("label", name)),
                        "recall_k": recall_k, "options": options})
    return {"name": str(suite.get("name", "suite")), "dataset_root_base": suite.get("dataset_root_base"),
            "datasets": checked}


def fill_root(template: str, base: Optional[str]) -> Path:
    if "{root}" in template and base is None:
        raise ConfigError(f"dataset root {template} uses {{root}}: give --dataset-root-base or set "
                          f"dataset_root_base in the suite")
    return Path(template.replace("{root}", str(base))).expanduser()


def result_filename(model_spec: str, dataset: str, task: str) -> str:
    return f"{slug(model_spec)}__{slug(dataset)}__{task}.json"


def model_labels(specs: Sequence[str]) -> list[str]:
    """Short column names for the table; the full spec where two short ones would collide."""
    short = [slug(s) for s in specs]
    return [s if short.count(s) == 1 else spec for s, spec in zip(short, specs)]


def _metric_rows(entry: dict, task: str) -> list[str]:
    # a task not known yet (a missing set's) shows the classification rows
    return metric_rows(task if task in TASKS else CLASSIFICATION, entry["recall_k"])


def _cell(result: dict, metric: str) -> str:
    if result["status"] == "missing":
        return f"missing (looked in {result['looked_in']})"
    if result["status"] == "error":
        return f"error: {result['message']}"
    value = result["metrics"].get(metric)
    return "n/a" if value is None else f"{100 * value:.2f}"


def render_markdown(suite_name: str, specs: Sequence[str], entries: list[dict], results: list[list[dict]]) -> str:
    """A table with one row per (dataset, metric) and one column per model; results[m][d]."""
    labels = model_labels(specs)
    lines = [f"# {suite_name}: zero-shot results (%)", "",
             "| dataset | task | metric | " + " | ".join(labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for d, entry in enumerate(entries):
        row_results = [results[m][d] for m in range(len(specs))]
        task = next((r["task"] for r in row_results if r["status"] == "ok"), row_results[0]["task"])
        short_task = task.replace("zeroshot_", "").replace("cross_model_", "cross-model ")
        if all(r["status"] != "ok" for r in row_results) and len({_cell(r, "") for r in row_results}) == 1:
            lines.append(f"| {entry['label']} | {short_task} | all | " +
                         " | ".join(_cell(r, "") for r in row_results) + " |")
            continue
        for metric in _metric_rows(entry, task):
            lines.append(f"| {entry['label']} | {short_task} | {metric} | " +
                         " | ".join(_cell(r, metric) for r in row_results) + " |")
    lines += ["", "## Throughput (images/s, data loading included)", "",
              "| dataset | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for d, entry in enumerate(entries):
        cells = [f"{results[m][d]['images_per_second']:.1f}" if results[m][d]["status"] == "ok" else "-"
                 for m in range(len(specs))]
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_suite(suite: Union[dict, str, Path], model_specs: Sequence[str], output_dir, *,
              dataset_root_base: Optional[str] = None, batch_size: int = 64, workers: int = 4, device="cpu",
              precision: str = "fp32", show_progress: bool = True, gallery_model: Optional[str] = None,
              gallery_pretrained: Optional[str] = None, gallery_dir=None, cache_dir: Optional[str] = None) -> dict:
    """Evaluate every model on every dataset of `suite`; write the JSONs and results.md into `output_dir`.

    The cross-model entries search each model's queries against `gallery_model`'s embeddings of the set, made once
    per set and kept in `gallery_dir` (default OUTPUT_DIR/gallery), where a later run finds them again.
    Returns {"suite", "models", "datasets", "results": [[result per dataset] per model], "markdown",
    "missing": n, "errors": n}. Model specs are anything cifd_clip.clip_models.load_model accepts.
    """
    from ..clip_models import load_model
    from .runner import evaluate_model_on_dataset, result_header, weights_label

    suite = load_suite(suite)
    if not model_specs:
        raise ConfigError("give at least one model to evaluate")
    base = dataset_root_base if dataset_root_base is not None else suite["dataset_root_base"]
    roots = [fill_root(e["root"], base) for e in suite["datasets"]]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    galleries = _gallery_sources(suite["datasets"], gallery_model, gallery_pretrained,
                                 Path(gallery_dir) if gallery_dir else output_dir / "gallery", device, cache_dir)
    results: list[list[dict]] = []
    for spec in model_specs:
        tower = load_model(spec, device=device, cache_dir=cache_dir)
        per_model = []
        for entry, root, gallery in zip(suite["datasets"], roots, galleries):
            try:
                result = evaluate_model_on_dataset(tower, entry["name"], root, entry["task"], batch_size=batch_size,
                                                   workers=workers, recall_k=entry["recall_k"], device=device,
                                                   precision=precision, options=entry["options"],
                                                   show_progress=show_progress, gallery=gallery)
            except UserError as e:  # bad data in one set must not cost the others
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                result = {**result_header(entry["name"], spec, weights_label(tower),
                                          entry["task"] or default_task(entry["name"]) or "unknown"),
                          "status": "error", "message": message, "dataset_root": str(root)}
            result["label"] = entry["label"]
            (output_dir / result_filename(spec, entry["name"], result["task"])).write_text(
                json.dumps(result, indent=2) + "\n")
            log.info("%s on %s: %s", spec, entry["label"], _summary(result))
            per_model.append(result)
        results.append(per_model)
        del tower

    markdown = render_markdown(suite["name"], model_specs, suite["datasets"], results)
    summary = {"suite": suite["name"], "models": list(model_specs), "datasets": suite["datasets"],
               "results": results, "markdown": markdown,
               "missing": sum(r["status"] == "missing" for rs in results for r in rs),
               "errors": sum(r["status"] == "error" for rs in results for r in rs)}
    (output_dir / "results.md").write_text(markdown)
    (output_dir / "results.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "markdown"},
                                                        indent=2) + "\n")
    return summary


def _gallery_sources(entries: list[dict], gallery_model: Optional[str], gallery_pretrained: Optional[str],
                     gallery_dir: Path, device, cache_dir: Optional[str] = None) -> list:
    """Per entry: None, or the cross-model entry's GallerySource (the teacher loaded once, one file per set)."""
    from ..clip_models import load_model
    from .cross_model import GallerySource

    if not any(e["task"] in CROSS_TASKS for e in entries):
        if gallery_model:
            raise ConfigError("--gallery-model is for a suite's cross-model entries (task cross_model_retrieval or "
                              "cross_model_classification), and this suite has none")
        return [None] * len(entries)
    teacher, fingerprint = None, None
    if gallery_model:
        from ..clip_models import weights_fingerprint

        teacher = load_model(gallery_model, gallery_pretrained, device=device, cache_dir=cache_dir)
        fingerprint = weights_fingerprint(teacher.model)
    return [GallerySource(teacher, gallery_dir / f"{slug(e['label'])}__{e['task']}.pt", fingerprint)
            if e["task"] in CROSS_TASKS else None for e in entries]


def _summary(result: dict) -> str:
    if result["status"] != "ok":
        return result.get("message", result["status"])
    first = next(iter(result["metrics"].items()))
    return f"{first[0]}={100 * first[1]:.2f}, {result['images_per_second']:.1f} images/s"
