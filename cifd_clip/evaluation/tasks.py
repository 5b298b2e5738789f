"""The evaluation tasks, one row each (torch-free: `cifd-clip eval --help` reads it).

A task declares its CLIP_benchmark name, the `dataset_type.txt` a CLIP_benchmark webdataset set of its kind
holds, the plain task whose sets it reads (a cross-model task reads the sets of a plain one), the metric rows
a results table shows, its Hugging Face task type, and the function that scores a model (MODULE:FUNCTION in this package: a plain task's
is `fn(model, loader, tokenizer, info, *, device, recall_k, precision)`, a cross-model task's
`fn(student_embeddings, teacher_embeddings, base_task, recall_k, where)`). `eval`, `bench`, the
suites, evaluation during training and the demo report all read this table: a new task is its module plus one
row here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DataError

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
CROSS_RETRIEVAL = "cross_model_retrieval"
CROSS_CLASSIFICATION = "cross_model_classification"
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
DEFAULT_RECALL_K = (1, 5, 10)  # CLIP_benchmark's recall@K for retrieval, when a run or suite entry sets none


def retrieval_rows(recall_k: Sequence[int]) -> list[str]:
    return [f"{d}_retrieval_recall@{k}" for k in recall_k for d in ("image", "text")]


def classification_rows(recall_k: Sequence[int] = ()) -> list[str]:
    return list(CLASSIFICATION_METRICS)


def _cross(rows: Callable[[Sequence[int]], list[str]], retained: str) -> Callable[[Sequence[int]], list[str]]:
    """A cross-model task's rows: the cross figures, the teacher's and the student's own, and the retained share."""
    def cross_rows(recall_k: Sequence[int]) -> list[str]:
        plain = rows(recall_k)
        return plain + [f"{who}_{r}" for who in ("teacher", "student") for r in plain] + [retained]
    return cross_rows


@dataclass(frozen=True)
class EvalTask:
    name: str
    dataset_type: str  # what dataset_type.txt says for a webdataset set of this kind
    base: str  # "" for a plain task; a cross-model task: the plain task whose sets it reads
    rows: Callable[[Sequence[int]], list[str]]  # metric rows of a results table, given --recall-k
    scorer: str  # MODULE:FUNCTION in cifd_clip.evaluation
    hf_task: str  # the Hugging Face model card's task type for its results

    def score(self) -> Callable:
        module, function = self.scorer.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)


TASKS = {t.name: t for t in [
    EvalTask(CLASSIFICATION, "classification", "", classification_rows, "zeroshot:score_task",
             "zero-shot-image-classification"),
    EvalTask(RETRIEVAL, "retrieval", "", retrieval_rows, "retrieval:score_task", "zero-shot-image-retrieval"),
    EvalTask(CROSS_RETRIEVAL, "retrieval", RETRIEVAL, _cross(retrieval_rows, "recall_retained"),
             "cross_model:cross_model_metrics", "zero-shot-image-retrieval"),
    EvalTask(CROSS_CLASSIFICATION, "classification", CLASSIFICATION,
             _cross(classification_rows, "acc1_retained"), "cross_model:cross_model_metrics",
             "zero-shot-image-classification"),
]}
PLAIN_TASKS = tuple(name for name, task in TASKS.items() if not task.base)
CROSS_TASKS = tuple(name for name, task in TASKS.items() if task.base)


def metric_rows(task: str, recall_k: Sequence[int]) -> list[str]:
    return TASKS[task].rows(recall_k)


def webdataset_task(root: Path) -> str:
    """The plain task of a CLIP_benchmark webdataset set, from its dataset_type.txt (classification when absent)."""
    type_file = Path(root) / "dataset_type.txt"
    dataset_type = type_file.read_text().strip().lower() if type_file.is_file() else "classification"
    for name in PLAIN_TASKS:
        if TASKS[name].dataset_type == dataset_type:
            return name
    kinds = " and ".join(TASKS[name].dataset_type for name in PLAIN_TASKS)
    raise DataError(f"{type_file} says {dataset_type!r}; only {kinds} sets are supported")
