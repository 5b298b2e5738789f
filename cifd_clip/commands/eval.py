"""Evaluate one model on one dataset: zero-shot classification or image-text retrieval.

Options overlap CLIP_benchmark's (with dashes): --model, --pretrained, --dataset wds/NAME,
--dataset-root, --task, --recall-k, --batch-size, --workers (--num-workers), --output. Datasets: wds/NAME
(CLIP_benchmark's webdataset layout), imagenet1k, imagenetv2, imagenet-r, imagenet-a, objectnet,
flickr30k, mscoco, folder[:NAME] (see docs/evaluation.md for the layouts). Writes one JSON with
CLIP_benchmark's keys and metric names, plus images/s.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import option, required
from ..errors import ConfigError
from ..evaluation.options import EvalRunOptions
from ..evaluation.tasks import DEFAULT_RECALL_K, TASKS, webdataset_task

TASK_CHOICES = ["auto", *TASKS]


@dataclass
class Config(EvalRunOptions):
    model: str = required("model spec: open_clip name, NAME@TAG, NAME@FILE, our checkpoint .pt, local-dir:PATH, "
                          "or a model config .json")
    dataset: list[str] = required("dataset(s): wds/NAME, imagenet1k, imagenetv2, imagenet-r, imagenet-a, objectnet, "
                                  "flickr30k, mscoco or folder[:NAME]; several after one flag are evaluated in turn")
    dataset_root: str = required("folder holding the dataset (see docs/evaluation.md for each layout); with several "
                                 "datasets a template with {dataset} or {dataset_cleaned} (wds/x -> wds-x), as "
                                 "CLIP_benchmark's")
    language: list[str] = option(["en"], "language of the class names and prompts, as CLIP_benchmark's; the built-in "
                                         "ones are English, another needs --classnames and --templates files in it")
    pretrained: Optional[str] = option(None, "weights file or open_clip pretrained tag for --model")
    task: str = option("auto", "task; auto = the dataset's own", choices=TASK_CHOICES)
    recall_k: list[int] = option(list(DEFAULT_RECALL_K), "K values of recall@K for retrieval")
    output: Optional[str] = option(None, "result JSON; {dataset}, {model}, {pretrained}, {task}, {language} are "
                                         "filled in (default: {dataset}_{model}_{task}.json in the current folder)")
    split: str = option("test", "split folder of a webdataset set (ROOT/SPLIT/) or Karpathy split")
    classnames: Optional[str] = option(None, "class names file, one a line (folder and wds sets)")
    templates: Optional[str] = option(None, "prompt templates file, one a line with {c} (folder and wds sets)")
    annotation_file: Optional[str] = option(None, "Karpathy JSON / captions file for flickr30k or mscoco")
    captions_per_image: int = option(5, "captions kept per image for flickr30k/mscoco (0 = all)")
    border_crop: int = option(2, "pixels cropped off each ObjectNet image border (0 = none, as CLIP_benchmark)")
    gallery_model: Optional[str] = option(None, "cross-model tasks: the teacher whose embeddings of the set form the "
                                                "index the model's queries search (any --model spec)")
    gallery_pretrained: Optional[str] = option(None, "weights file or open_clip pretrained tag for --gallery-model")
    gallery_embeddings: Optional[str] = option(None, "cross-model tasks: a file of the teacher's embeddings of the "
                                                     "set: read when it exists, else written by --gallery-model")

    def validate(self):
        EvalRunOptions.validate(self)
        cross = self.task.startswith("cross_model_")
        if cross and not (self.gallery_model or self.gallery_embeddings):
            raise ConfigError(f"--task {self.task} searches the model's queries against the teacher's embeddings: "
                              f"pass --gallery-model TEACHER (and --gallery-embeddings FILE to keep them) or "
                              f"--gallery-embeddings FILE from an earlier run")
        if not cross and (self.gallery_model or self.gallery_embeddings or self.gallery_pretrained):
            raise ConfigError("--gallery-model, --gallery-pretrained and --gallery-embeddings belong to the "
                              "cross-model tasks: pass --task cross_model_retrieval or cross_model_classification")
        if not self.recall_k or any(k < 1 for k in self.recall_k):
            raise ConfigError(f"--recall-k needs values of at least 1, got {self.recall_k}")
        if self.output:
            try:
                self.output.format(dataset="d", model="m", pretrained="p", task="t", language="l")
            except (KeyError, IndexError, ValueError):
                raise ConfigError(f"--output {self.output} may only use the fields {{dataset}}, {{model}}, "
                                  f"{{pretrained}}, {{task}} and {{language}}") from None
        if len(self.language) != 1:
            raise ConfigError(f"give one --language per eval run, got {self.language}")
        if self.language[0] != "en" and not (self.classnames and self.templates):
            raise ConfigError(f"--language {self.language[0]}: the built-in class names and prompts are English; pass "
                              f"--classnames and --templates files in that language")
        if len(self.dataset) > 1:
            for flag, value in (("--dataset-root", self.dataset_root), ("--output", self.output or "{dataset}"),
                                ("--gallery-embeddings", self.gallery_embeddings or "{dataset}")):
                if "{dataset}" not in value and "{dataset_cleaned}" not in value:
                    raise ConfigError(f"with several --dataset, {flag} must be a template with {{dataset}} or "
                                      f"{{dataset_cleaned}} (one per dataset), got {value}")
        for template in filter(None, (self.dataset_root, self.gallery_embeddings)):
            try:
                template.format(dataset="d", dataset_cleaned="d")
            except (KeyError, IndexError, ValueError):
                raise ConfigError(f"{template} may only use the fields {{dataset}} and {{dataset_cleaned}}") from None


def dataset_options(cfg, dataset: str) -> dict:
    """The build_dataset options the user set (those left at their defaults are not passed)."""
    options = {"split": cfg.split, "captions_per_image": cfg.captions_per_image}
    if dataset.strip() == "objectnet":
        options["border_crop"] = cfg.border_crop
    for key, value in (("classnames_file", cfg.classnames), ("templates_file", cfg.templates),
                       ("annotation_file", cfg.annotation_file)):
        if value:
            options[key] = value
    return options


def _expected_task(cfg, name: str, root: Path) -> str:
    """The task the result will report, known before evaluating (a wds set says it in dataset_type.txt)."""
    from ..evaluation.datasets import default_task

    if cfg.task != "auto":
        return cfg.task
    return default_task(name) or webdataset_task(root)


def summary_line(result: dict) -> str:
    metrics = ", ".join(f"{k}={v * 100:.2f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in result["metrics"].items() if not k.startswith(("teacher_", "student_")))
    return (f"{result['dataset']} ({result['task']}) {result['model']}: {metrics} "
            f"[{result['num_images']} images, {result['images_per_second']:.1f} images/s]")


def dataset_root_of(cfg, dataset: str) -> Path:
    """--dataset-root, with CLIP_benchmark's {dataset} / {dataset_cleaned} filled in for this dataset."""
    return Path(cfg.dataset_root.format(dataset=dataset, dataset_cleaned=dataset.replace("/", "-"))).expanduser()


def run(cfg: Config):
    from .. import config as config_lib
    from ..evaluation.datasets import DatasetMissing, canonical_name, default_task
    from ..evaluation.runner import evaluate_model_on_dataset, weights_label
    from ..evaluation.suite import slug
    from ..file_io import write_text_atomic
    from ..output_checks import check_file_target
    from ..clip_models import load_model

    device, precision = cfg.resolved_device_and_precision()
    task = None if cfg.task == "auto" else cfg.task
    names = [canonical_name(d) for d in cfg.dataset]
    for name, dataset in zip(names, cfg.dataset):
        default_task(name)  # an unknown dataset name fails here, before the model loads
        root = dataset_root_of(cfg, dataset)
        if not root.is_dir():
            raise DatasetMissing(name, root, "no folder")
    tower = load_model(cfg.model, cfg.pretrained, device=device, cache_dir=cfg.cache_dir)
    teacher = None
    if task is not None and task.startswith("cross_model_") and cfg.gallery_model:
        teacher = load_model(cfg.gallery_model, cfg.gallery_pretrained, device=device, cache_dir=cfg.cache_dir)
    template = cfg.output or "{dataset}_{model}_{task}.json"
    language = cfg.language[0]

    def output_path(dataset: str, pretrained: str, task_name: str) -> Path:
        return Path(template.format(dataset=slug(dataset), model=slug(cfg.model), pretrained=slug(pretrained or "none"),
                                    task=task_name, language=language))

    # every output must be writable before the evaluation runs, not found unusable after it
    for name, dataset in zip(names, cfg.dataset):
        check_file_target(output_path(name, cfg.pretrained or weights_label(tower),
                                      _expected_task(cfg, name, dataset_root_of(cfg, dataset))), "--output")
    for name, dataset in zip(names, cfg.dataset):
        gallery = None
        if task is not None and task.startswith("cross_model_"):
            from ..evaluation.cross_model import GallerySource

            path = cfg.gallery_embeddings.format(dataset=dataset, dataset_cleaned=dataset.replace("/", "-")) \
                if cfg.gallery_embeddings else None
            gallery = GallerySource(teacher, path)
        result = evaluate_model_on_dataset(tower, dataset, dataset_root_of(cfg, dataset), task,
                                           batch_size=cfg.batch_size, workers=cfg.workers, recall_k=cfg.recall_k,
                                           device=device, precision=precision, options=dataset_options(cfg, dataset),
                                           pretrained=cfg.pretrained or None, gallery=gallery)
        result["language"] = language
        output = check_file_target(output_path(result["dataset"], result["pretrained"], result["task"]), "--output")
        write_text_atomic(output, json.dumps(result, indent=2) + "\n")
        config_lib.save(cfg, output.with_suffix(".config.yaml"))
        print(summary_line(result))
        print(f"wrote {output}")
    return 0
