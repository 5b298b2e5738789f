"""Evaluation throughput: cifd_clip's evaluators vs CLIP_benchmark 1.6.2 on the same model and data.

Writes a CLIP_benchmark-layout classification set and retrieval set (random images) to a temp folder,
evaluates them with both, end to end (classifier build + data loading + forward), and prints
images/s and the ratio ours / CLIP_benchmark. The metrics of the two must agree too.
Results go to benchmarks/results/bench_eval.json.

    python benchmarks/bench_eval.py [--model tiny-vit-student] [--images 480] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny set writers the tests use

from test_eval_support import export_local_dir, write_wds_classification, write_wds_retrieval  # noqa: E402


def clip_benchmark_eval(spec, dataset, root, task, args, output: Path) -> dict:
    from clip_benchmark import cli
    ns = argparse.Namespace(
        dataset=dataset, dataset_root=str(root), split="test", model=spec, pretrained="", task=task, amp=args.amp,
        num_workers=args.workers, recall_k=[1, 5, 10], seed=0, batch_size=args.batch_size, model_cache_dir=None,
        annotation_file="", custom_classname_file=None, custom_template_file=None, dump_classnames=False,
        dump_templates=False, language="en", output=str(output), verbose=False, save_clf=None, load_clfs=[],
        skip_existing=False, model_type="open_clip", wds_cache_dir=None, distributed=False, skip_load=False,
        train_split="train", val_split=None, val_proportion=None)
    cli.run(ns)
    return json.loads(output.read_text())["metrics"]


def ours_eval(tower, dataset, root, task, args) -> dict:
    from cifd_clip.evaluation.runner import evaluate_model_on_dataset
    return evaluate_model_on_dataset(tower, dataset, root, task, batch_size=args.batch_size, workers=args.workers,
                                     device=args.device, precision="amp" if args.amp else "fp32",
                                     show_progress=False)["metrics"]


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit-student", help="open_clip / cifd_clip model config name")
    parser.add_argument("--images", type=int, default=480, help="classification images (retrieval: half)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast in both (CLIP_benchmark's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cifd_clip.clip_models import load_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    n_classes = 24
    write_wds_classification(tmp / "cls", n_classes=n_classes, per_class=max(1, args.images // n_classes), shards=4)
    write_wds_retrieval(tmp / "ret", n_images=max(10, args.images // 2), captions=5, shards=4)
    spec = export_local_dir(args.model, tmp / "model", seed=0)
    tower = load_model(spec, device=args.device)

    rows = []
    for dataset, root, task, n in (("wds/cls", tmp / "cls", "zeroshot_classification", n_classes * max(1, args.images // n_classes)),
                                   ("wds/ret", tmp / "ret", "zeroshot_retrieval", max(10, args.images // 2))):
        ours_s, ours_metrics = timed(lambda: ours_eval(tower, dataset, root, task, args), args.repeats)
        ref_s, ref_metrics = timed(lambda: clip_benchmark_eval(spec, dataset, root, task, args, tmp / "cb.json"),
                                   args.repeats)
        max_diff = max(abs((ours_metrics[k] or 0) - (ref_metrics[k] if ref_metrics[k] == ref_metrics[k] else 0))
                       for k in ref_metrics)
        rows.append({"dataset": dataset, "task": task, "images": n, "ours_images_per_s": n / ours_s,
                     "clip_benchmark_images_per_s": n / ref_s, "ratio": ref_s / ours_s,
                     "max_metric_difference_points": 100 * max_diff})

    print(f"model {args.model}, device {args.device}, {args.threads} threads, {args.workers} workers, "
          f"batch {args.batch_size}, amp {args.amp}, median of {args.repeats}")
    print(f"| {'task':<24} | {'images':>6} | {'ours img/s':>10} | {'CLIP_benchmark img/s':>20} | {'ours / CB':>9} "
          f"| {'max |diff| (pts)':>16} |")
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 12}|{'-' * 22}|{'-' * 11}|{'-' * 18}|")
    for r in rows:
        print(f"| {r['task']:<24} | {r['images']:>6} | {r['ours_images_per_s']:>10.1f} | "
              f"{r['clip_benchmark_images_per_s']:>20.1f} | {r['ratio']:>8.2f}x | {r['max_metric_difference_points']:>16.3f} |")
    out = REPO / "benchmarks" / "results" / "bench_eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "machine": platform.platform(),
                               "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
