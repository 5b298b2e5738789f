"""Teacher-embedding cache: embedding throughput, read-back throughput and cache size per million samples.

Throughput (samples/s, one process, `--threads` CPU threads) on the demo shards with a tiny teacher:
  baseline         decode + teacher eval preprocess + teacher forward, nothing written (what an online
                   teacher costs per sample and epoch); timed from the first sample, the teacher already built
  embed K=1/K=4    `cifd-clip embed` (same work + writing the cache, `--workers` loader workers): end to end
                   (cli.main: building the teacher, its weights fingerprint, the checks and cache.json included)
                   and its loop alone (the rate embed prints: from the loader's start to the last shard committed)
  read cache       `iter_cached_embeddings`: what RDM training pays per sample instead of a teacher forward
The baseline and the embed runs take turns for `--rounds` rounds; each ratio is the median over rounds of that
round's embed rate / that round's baseline rate (timings on a shared machine are noisy).
Cache size: bytes per sample measured on real cache shards written with the real writer, for the tiny
teacher (D=128) and for ViT-L-14's width (D=768, synthetic unit vectors), scaled to 10^6 samples.

    .venv/bin/python benchmarks/bench_embed.py [--samples 2000] [--rounds 3] [--threads 2] [--workers 1]

Prints a table and saves benchmarks/results/bench_embed.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifd_clip import cli
from cifd_clip.data import embedding_cache as cache_lib
from cifd_clip.data.augment import AugmentSettings, sample_views
from cifd_clip.data.shapes import write_demo_data
from cifd_clip.data.shards import iter_samples
from cifd_clip.clip_models import load_teacher

RESULTS = Path(__file__).parent / "results"


def baseline_forward(spec: str, teacher_name: str, batch_size: int) -> float:
    teacher = load_teacher(teacher_name)
    n, start, images, texts = 0, time.perf_counter(), [], []

    def flush():
        teacher.encode_image(torch.stack(images))
        teacher.encode_text(teacher.tokenizer(texts))
    for s in iter_samples(spec):
        images.append(teacher.preprocess(s["image"]))
        texts.append(s["text"])
        n += 1
        if len(images) == batch_size:
            flush()
            images, texts = [], []
    if images:
        flush()
    return n / (time.perf_counter() - start)


def embed_throughput(spec: str, teacher_name: str, out: Path, views: int, batch_size: int, threads: int,
                     workers: int) -> tuple:
    """(end-to-end samples/s, loop samples/s, cache meta) of one `cifd-clip embed` run into a fresh folder."""
    shutil.rmtree(out, ignore_errors=True)
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        rc = cli.main(["embed", "--teacher", teacher_name, "--train-data", spec, "--out", str(out), "--augmentations",
                       str(views), "--batch-size", str(batch_size), "--workers", str(workers), "--threads",
                       str(threads)])
    elapsed = time.perf_counter() - start
    assert rc == 0
    meta = cache_lib.read_cache_meta(out)
    loop = re.search(r"embedded \d+ samples from \d+ shards in [\d.]+s \(([\d.]+) samples/s\)", printed.getvalue())
    return meta["num_samples"] / elapsed, float(loop.group(1)) if loop else None, meta


def read_throughput(out: Path, batch_size: int) -> float:
    start, n = time.perf_counter(), 0
    for batch in cache_lib.iter_cached_embeddings(out, batch_size=batch_size):
        n += len(batch["key"])
    return n / (time.perf_counter() - start)


def bytes_per_sample(folder: Path, dim: int, views: int, dtype: str, n: int = 2000) -> float:
    """Write one real cache shard of `n` samples with unit vectors of width `dim`; bytes per sample."""
    rng = np.random.default_rng(0)
    aug = AugmentSettings(views=views)
    writer = cache_lib.SiblingShardWriter(folder, f"d{dim}-k{views}-{dtype}.tar", dtype)
    for i in range(n):
        img = rng.standard_normal((views, dim)).astype(np.float32)
        txt = rng.standard_normal(dim).astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        writer.write(f"{i:08d}", img, txt / np.linalg.norm(txt), sample_views(aug, f"{i:08d}", 640, 480))
    return writer.commit({"source": "", "skipped": 0})["bytes"] / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                        help="embed's loader workers, one embed run each (0 is embed's default on CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="baseline and embed runs, taking turns")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--teacher", default="tiny-vit-teacher")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        write_demo_data(work / "data", train_samples=args.samples, val_samples=4, zeroshot_samples=4,
                        retrieval_samples=4, image_size=64, samples_per_shard=100)
        spec = str(work / "data" / "train") + "/{00000..%05d}.tar" % (max(args.samples // 100, 1) - 1)
        runs: dict = {}
        for _ in range(args.rounds):
            runs.setdefault("baseline (teacher forward, no cache)", []).append(
                baseline_forward(spec, args.teacher, args.batch_size))
            for k in (1, 4):
                for w in args.workers:
                    total, loop, meta = embed_throughput(spec, args.teacher, work / f"cache{k}", k, args.batch_size,
                                                         args.threads, w)
                    runs.setdefault(f"embed K={k} {w} workers, end to end", []).append(total)
                    runs.setdefault(f"embed K={k} {w} workers, loop", []).append(loop)
            torch.set_num_threads(args.threads)  # embed --threads set this process's count; the baseline keeps its own
        base_runs = runs["baseline (teacher forward, no cache)"]
        rows = {name: statistics.median(v) for name, v in runs.items()}
        ratios = {name: statistics.median(x / b for x, b in zip(v, base_runs)) for name, v in runs.items()}
        rows["read cache (iter_cached_embeddings)"] = read_throughput(work / "cache1", 256)
        base = rows["baseline (teacher forward, no cache)"]
        ratios["read cache (iter_cached_embeddings)"] = rows["read cache (iter_cached_embeddings)"] / base
        print(f"\nthroughput, {args.teacher}, {args.samples} samples, {args.threads} threads, embed with {args.workers} "
              f"loader workers, CPU; medians of {args.rounds} rounds; ratio = median of per-round ratios to the baseline")
        print(f"{'':40s} {'samples/s':>12s} {'ratio':>8s}")
        for name, value in rows.items():
            print(f"{name:40s} {value:12.1f} {ratios[name]:8.2f}")

        sizes = {}
        teacher_dim = int(meta["image_dim"])
        for dim in sorted({teacher_dim, 768}):
            for dtype in ("float16", "float32"):
                for k in (1, 4):
                    sizes[f"D={dim} {dtype} K={k}"] = bytes_per_sample(work, dim, k, dtype)
        base_size = sizes[f"D=768 float16 K=1"]
        print(f"\ncache size (bytes per sample measured on written shards; raw vectors = (K+1)·D·itemsize)")
        print(f"{'':24s} {'bytes/sample':>13s} {'GB per 1M':>10s} {'raw GB/1M':>10s} {'ratio':>7s}")
        for name, b in sizes.items():
            dim, dtype, k = int(name.split()[0][2:]), name.split()[1], int(name.split()[2][2:])
            raw = (k + 1) * dim * np.dtype(dtype).itemsize
            print(f"{name:24s} {b:13.0f} {b * 1e6 / 1e9:10.2f} {raw * 1e6 / 1e9:10.2f} {b / base_size:7.2f}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                  "workers": args.workers, "rounds": args.rounds, "teacher": args.teacher, "samples": args.samples,
                  "throughput_samples_per_s": rows, "ratio_to_baseline": ratios, "runs": runs,
                  "bytes_per_sample": sizes}
        (RESULTS / "bench_embed.json").write_text(json.dumps(result, indent=1))
        print(f"\nsaved {RESULTS / 'bench_embed.json'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
