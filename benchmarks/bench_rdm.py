"""RDM training cost next to a teacher forward pass over the same number of samples.

Measures (one process, `--threads` threads, in-memory data so that only compute is timed):
  rdm train <dim>       one training step of a whole RDM family (3 rates x 2 modalities, default CLIP
                        widths: hidden 1024, bottleneck 256) per batch: embeddings/s
  teacher fwd <model>   a frozen open_clip teacher's image + text forward pass (eval, no grad), random init,
                        on random images/tokens at its own resolution/context: samples/s
The ratio column is "teacher seconds per sample / RDM-family seconds per sample": how many RDM-family
training samples cost as much as one teacher forward — why train-rdm reads cached embeddings.
Analytic MACs per sample are printed beside each row (RDM: linear layers x 3 for forward + backward).

    .venv/bin/python benchmarks/bench_rdm.py [--threads 2] [--batch-size 64] [--batches 3] [--rdm-batch-size 1024] [--device cpu]

Prints a table and saves benchmarks/results/bench_rdm.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cifd_clip.core.rdm import RDMFamily
from cifd_clip.rdm.training import family_loss
from cifd_clip.clip_models import load_teacher

RESULTS = Path(__file__).parent / "results"
RATES = [100.0, 300.0, 1000.0]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rdm_family_throughput(dim: int, batch_size: int, batches: int, device: torch.device) -> tuple[float, int]:
    family = RDMFamily.build({"image": dim, "text": dim}, RATES).to(device).train()
    optimizer = torch.optim.Adam(family.parameters(), lr=1e-3)
    data = [{"t_image_emb": F.normalize(torch.randn(batch_size, dim, device=device), dim=-1),
             "t_text_emb": F.normalize(torch.randn(batch_size, dim, device=device), dim=-1)} for _ in range(batches + 1)]

    def step(batch):
        loss, _ = family_loss(family, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step(data[0])  # warm-up
    _sync(device)
    start = time.perf_counter()
    for batch in data[1:]:
        step(batch)
    _sync(device)
    seconds = time.perf_counter() - start
    linear_macs = sum(m.in_features * m.out_features for m in family.modules() if isinstance(m, torch.nn.Linear))
    return batch_size * batches / seconds, 3 * linear_macs  # per image+text pair, forward + backward


def teacher_throughput(model: str, batch_size: int, batches: int, device: torch.device) -> float:
    teacher = load_teacher(model, device=str(device))
    size = teacher.tower.preprocess_cfg.get("size", teacher.model.visual.image_size)
    size = size if isinstance(size, (tuple, list)) else (size, size)
    ctx = teacher.tower.model_cfg["text_cfg"].get("context_length", 77)
    images = torch.randn(batch_size, 3, *size, device=device)
    tokens = torch.randint(1, 1000, (batch_size, ctx), device=device)
    teacher.encode_image(images[:2])
    teacher.encode_text(tokens[:2])
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        teacher.encode_image(images)
        teacher.encode_text(tokens)
    _sync(device)
    return batch_size * batches / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rdm-batch-size", type=int, default=1024, help="train-rdm's default batch size")
    parser.add_argument("--rdm-batches", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teachers", default="tiny-vit-teacher,ViT-B-32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    rows = []
    for name in args.teachers.split(","):
        teacher = load_teacher(name)
        dim = teacher.embed_dim
        del teacher
        teacher_sps = teacher_throughput(name, args.batch_size, args.batches, device)
        rdm_sps, rdm_macs = rdm_family_throughput(dim, args.rdm_batch_size, args.rdm_batches, device)
        rows.append({"teacher": name, "embed_dim": dim, "teacher_samples_per_s": teacher_sps,
                     "rdm_family_embeddings_per_s": rdm_sps, "rdm_family_train_macs_per_sample": rdm_macs,
                     "teacher_fwd_over_rdm_train": rdm_sps / teacher_sps})
    # the paper's teacher width (ViT-L-14 embeds in 768), RDMs only
    rdm_sps, rdm_macs = rdm_family_throughput(768, args.rdm_batch_size, args.rdm_batches, device)
    rows.append({"teacher": "(ViT-L-14 width, RDMs only)", "embed_dim": 768, "teacher_samples_per_s": None,
                 "rdm_family_embeddings_per_s": rdm_sps, "rdm_family_train_macs_per_sample": rdm_macs,
                 "teacher_fwd_over_rdm_train": None})

    header = f"{'teacher':30s} {'D':>5s} {'teacher fwd/s':>14s} {'RDM-family train/s':>19s} {'RDM MMACs':>10s} {'ratio':>8s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        t = f"{r['teacher_samples_per_s']:.1f}" if r["teacher_samples_per_s"] else "-"
        ratio = f"{r['teacher_fwd_over_rdm_train']:.1f}x" if r["teacher_fwd_over_rdm_train"] else "-"
        print(f"{r['teacher']:30s} {r['embed_dim']:5d} {t:>14s} {r['rdm_family_embeddings_per_s']:19.0f} "
              f"{r['rdm_family_train_macs_per_sample'] / 1e6:10.1f} {ratio:>8s}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "rates": RATES, "args": vars(args), "device": str(device),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    (RESULTS / "bench_rdm.json").write_text(json.dumps(result, indent=1))
    print(f"saved {RESULTS / 'bench_rdm.json'}")


if __name__ == "__main__":
    main()
