"""Cost of one student training step: CIFD with cached targets vs the alternatives.

Variants (same student, batch size, threads; forward + backward + AdamW step):
  floor            student-only contrastive step (`cifd-clip train`)
  cifd_cached      CIFD, teacher and RDM targets from cached embeddings (3 RDMs per modality + IBMs)
  cifd_online      CIFD with the frozen teacher run on every batch
  openclip_online  open_clip-style online distillation: DistillClipLoss + teacher forward
for two teacher→student pairs. Each (pair, variant) runs in its own process so that its peak memory
(max RSS on CPU, max allocated on CUDA) is its own. Prints ratios to the floor and writes
benchmarks/results/bench_step.json.

    python benchmarks/bench_step.py [--batch-size 32] [--steps 5] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PAIRS = {"tiny": ("tiny-vit-teacher", "tiny-vit-student"), "vitb32": ("ViT-B-32", "tiny-vit-student")}
VARIANTS = ("floor", "cifd_cached", "cifd_online", "openclip_online")
RESULTS = Path(__file__).parent / "results"


def _batch(student, teacher, d: int, batch_size: int, online: bool, device):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    s_size = student.preprocess_cfg["size"]
    s_size = s_size if isinstance(s_size, int) else s_size[0]
    ctx = student.model_cfg["text_cfg"]["context_length"]
    batch = {"image": torch.randn(batch_size, 3, s_size, s_size, generator=g),
             "text": torch.randint(1, 49000, (batch_size, ctx), generator=g)}
    if online:
        t_size = teacher.preprocess_cfg["size"]
        t_size = t_size if isinstance(t_size, int) else t_size[0]
        batch["teacher_image"] = torch.randn(batch_size, 3, t_size, t_size, generator=g)
        batch["teacher_text"] = torch.randint(1, 49000, (batch_size, teacher.model_cfg["text_cfg"]["context_length"]),
                                              generator=g)
    else:
        batch["t_image_emb"] = F.normalize(torch.randn(batch_size, d, generator=g), dim=-1)
        batch["t_text_emb"] = F.normalize(torch.randn(batch_size, d, generator=g), dim=-1)
    return {k: v.to(device) for k, v in batch.items()}


def measure(pair: str, variant: str, batch_size: int, steps: int, device: str) -> dict:
    """Time `steps` training steps (after 2 warm-up steps) of one variant in this process."""
    import open_clip
    import torch
    from cifd_clip.distiller import Distiller
    from cifd_clip.engine.schedule import make_optimizer
    from cifd_clip.rdm.model import RDMFamily
    from cifd_clip.towers import Teacher, load_model, register_model_configs

    teacher_name, student_name = PAIRS[pair]
    register_model_configs()
    torch.manual_seed(0)
    student = load_model(student_name, device=device)
    online = variant in ("cifd_online", "openclip_online")
    # random init, no download; the cached variants never build the teacher, only read its config
    teacher_tower = load_model(teacher_name, device=device) if online else None
    teacher = Teacher(teacher_tower) if online else None
    d = int(open_clip.get_model_config(teacher_name)["embed_dim"])
    rdm = RDMFamily.build({"image": d, "text": d}, [1e2, 1e3, 1e4], hidden_dim=256, bottleneck_dim=64) \
        if variant.startswith("cifd") else None
    loss = {"floor": "contrastive", "openclip_online": "distill_clip"}.get(variant, "cifd")
    module = Distiller(student.model, loss=loss, student_dim=student.embed_dim,
                       teacher_dims=None if loss == "contrastive" else (d, d), teacher=teacher, rdm=rdm).to(device)
    optimizer = make_optimizer(module)
    batch = _batch(student, teacher_tower, d, batch_size, online, device)
    times = []
    for i in range(steps + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(module(batch).values()).backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"pair": pair, "variant": variant, "step_s": statistics.median(times), "peak_mem_mb": peak / 2 ** 20,
            "teacher": teacher_name, "student": student_name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--one", nargs=2, metavar=("PAIR", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch_size, args.steps, args.device)))
        return
    rows = []
    for pair in args.pairs:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--one", pair, variant, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"batch {args.batch_size}, {args.threads} threads, {args.device}; ratios to the student-only step (floor)")
    print(f"{'pair':8} {'variant':16} {'step ms':>9} {'× floor':>8} {'peak MB':>9} {'× floor':>8}")
    for row in rows:
        floor = next(r for r in rows if r["pair"] == row["pair"] and r["variant"] == "floor")
        row["time_ratio"] = row["step_s"] / floor["step_s"]
        row["mem_ratio"] = row["peak_mem_mb"] / floor["peak_mem_mb"]
        print(f"{row['pair']:8} {row['variant']:16} {1000 * row['step_s']:9.1f} {row['time_ratio']:8.2f} "
              f"{row['peak_mem_mb']:9.0f} {row['mem_ratio']:8.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_step.json"
    out.write_text(json.dumps({"settings": vars(args), "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
