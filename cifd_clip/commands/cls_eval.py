"""Evaluate an image classifier: top-1, top-5 and mean per-class recall on a split (CLIP_benchmark's names)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option, required
from ..evaluation.options import EvalRunOptions


@dataclass
class Config(EvalRunOptions):
    model: str = required("classifier: a checkpoint of ours or NAME@FILE")
    data: str = required("data: cifar100:DIR, imagefolder:DIR or wds:SHARDS")
    split: str = option("val", "split of --data (wds data is one split)", choices=["train", "val"])
    image_size: Optional[int] = option(None, "input resolution (default: the checkpoint's, else the recipe's)")
    output: Optional[str] = option(None, "result JSON (default: print only)")


def run(cfg: Config) -> int:
    import json

    from ..classify.data import open_set, recipe_for
    from ..classify.evaluate import evaluate_classifier
    from ..classify.loader import Views
    from ..classify.models import load_classifier
    from ..errors import UserError
    from ..file_io import write_text_atomic
    from ..output_checks import check_file_target

    if cfg.output:
        check_file_target(cfg.output, "--output")
    device, precision = cfg.resolved_device_and_precision()
    data = open_set(cfg.data, cfg.split)
    loaded = load_classifier(cfg.model, num_classes=data.num_classes)
    if loaded.num_classes != data.num_classes:
        raise UserError(f"{cfg.model} predicts {loaded.num_classes} classes, the data has {data.num_classes}")
    recipe = recipe_for(data.kind, cfg.image_size)
    metrics = evaluate_classifier(loaded.net.to(device), Views(data, recipe, train=False), batch_size=cfg.batch_size,
                                  workers=cfg.workers, device=device, precision=precision)
    result = {"dataset": data.name, "split": cfg.split, "model": cfg.model, "task": "classification",
              "metrics": metrics}
    if cfg.output:
        write_text_atomic(cfg.output, json.dumps(result, indent=2) + "\n")
    acc5 = "-" if metrics["acc5"] is None else f"{100 * metrics['acc5']:.2f}%"
    print(f"{data.name} ({cfg.split}) {cfg.model}: top-1 {100 * metrics['acc1']:.2f}%, top-5 {acc5}, mean per-class "
          f"recall {100 * metrics['mean_per_class_recall']:.2f}% [{metrics['num_images']} images]")
    return 0
