"""Decode + preprocess + tokenize throughput of the training loader on the demo shards.

Prints samples/s with 0, 1 and 2 dataloader workers, the ratio to the 0-worker baseline, and open_clip_train's
webdataset pipeline on the same shards where it runs (it crashes with webdataset >= 0.2.111: see COMPAT.md).
Our loader's worker counts take turns for `--rounds` rounds (one epoch each); the table shows the medians over
rounds of samples/s and of the per-round ratio to that round's 0-worker epoch. Saves JSON to
benchmarks/results/bench_data.json.

    .venv/bin/python benchmarks/bench_data.py [--samples 2000] [--rounds 3] [--image-size 64] [--model tiny-vit-student]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import torch


def measure(batches, batch_size: int, warmup: int = 2) -> float:
    it = iter(batches)
    for _ in range(warmup):  # worker start-up and the first decodes are not throughput
        next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["image"]) if isinstance(batch, dict) else len(batch[0])
    return n / (time.perf_counter() - start)


def open_clip_train_rate(spec: str, num_samples: int, preprocess, tokenizer, batch_size: int, workers: int):
    try:
        from open_clip_train.data import get_wds_dataset
    except ImportError as e:
        return None, f"not installed ({e})"
    args = Namespace(train_data=spec, train_num_samples=num_samples, train_data_upsampling_factors=None,
                     dataset_resampled=False, seed=0, batch_size=batch_size, workers=workers, world_size=1,
                     val_data=None, val_num_samples=None)
    try:
        info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
        info.set_epoch(0)
        return measure(info.dataloader, batch_size), "ok"
    except Exception as e:  # report, do not hide: this is the known incompatibility
        return None, f"crashed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="tiny-vit-student", help="whose preprocess and tokenizer to use")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    torch.set_num_threads(1)

    import open_clip

    from cifd_clip.data.shapes import write_demo_data
    from cifd_clip.data.loader import make_train_loader
    from cifd_clip.clip_models import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(opts.model)
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=True)
    tokenizer = open_clip.get_tokenizer(opts.model)

    with tempfile.TemporaryDirectory() as tmp:
        per_shard = max(1, opts.samples // 8)
        info = write_demo_data(Path(tmp) / "demo", train_samples=opts.samples, val_samples=4, zeroshot_samples=36,
                               retrieval_samples=4, image_size=opts.image_size, samples_per_shard=per_shard)
        spec = str(Path(tmp) / "demo" / info["train_data"])
        rates = {w: [] for w in opts.workers}
        for r in range(opts.rounds):
            for workers in opts.workers:
                loader = make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer,
                                           batch_size=opts.batch_size, workers=workers, seed=0)
                rates[workers].append(measure(loader.iterate(r), opts.batch_size))
        first = opts.workers[0]
        rows = [{"pipeline": "cifd_clip", "workers": w, "samples_per_s": statistics.median(v), "status": "ok",
                 "runs": v, "ratio_median": statistics.median(x / b for x, b in zip(v, rates[first]))}
                for w, v in rates.items()]
        for workers in opts.workers:
            rate, status = open_clip_train_rate(spec, opts.samples, preprocess, tokenizer, opts.batch_size, workers)
            rows.append({"pipeline": "open_clip_train", "workers": workers, "samples_per_s": rate, "status": status})

    baseline = rows[0]["samples_per_s"]
    print(f"{'pipeline':<16} {'workers':>7} {'samples/s':>10} {'vs cifd_clip 0 workers':>23}  status")
    for r in rows:
        rate = r["samples_per_s"]
        r["ratio_to_baseline"] = r.get("ratio_median", rate / baseline if rate else None)
        shown = f"{rate:10.0f} {r['ratio_to_baseline']:22.2f}x" if rate else f"{'-':>10} {'-':>23}"
        print(f"{r['pipeline']:<16} {r['workers']:>7} {shown}  {r['status']}")
    out = Path(__file__).parent / "results" / "bench_data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(opts), "cpus": torch.get_num_threads(), "machine": platform.machine(),
                               "rows": rows}, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
