"""Cost of one student training step: CIFD with cached targets vs the alternatives, with a per-phase breakdown.

Variants (same student, batch size, threads; forward + backward + AdamW step):
  floor            student-only contrastive step (`cifd-clip train`)
  cifd_cached      CIFD, teacher and RDM targets from cached embeddings (3 RDMs per modality + IBMs)
  cifd_cached_exp  the same with the isometric decoder's Q by the matrix exponential (earlier rounds' default)
  cifd_online      CIFD with the frozen teacher run on every batch
  openclip_online  open_clip-style online distillation: DistillClipLoss + teacher forward
for two teacher→student pairs by default (tiny-vit-student with 128- and 512-wide targets), and on request the
paper's ViT-L-14 → ViT-S-16 (`--pairs vitl14-vits16`).

Timing: for each pair, every variant is built in ONE process and the variants take turns, one step each,
round after round (floor, cifd_cached, ... floor, cifd_cached, ...), so a load that comes and goes on the
machine hits all of them alike. Each step is split into phases, timed in place (the phases of
`Distiller.forward`, called one by one):
  student_forward   the student's image + text towers
  teacher_forward   the online teacher's image + text forward (online variants only)
  rdm_forward       the frozen RDM family's reconstructions (`RDMFamily.teach`, both modalities)
  method            the method's own forward: IBMs, decoders and every loss term
  backward          loss.backward()
  optimizer         zero_grad + AdamW step
Reported: the median over rounds of each variant's step time and of each phase, and — the headline — the
median over rounds of the per-round ratio step(variant) / step(floor); also the same ratio of the process's CPU
time per step (all threads), which another load on the machine disturbs less than wall time. The expensive online variants can be
timed in fewer rounds (`--online-steps`); their ratios then use the floor steps of the same rounds.
Peak memory (max RSS on CPU, max allocated on CUDA) is measured separately, each variant in its own process
for a few steps, so that it is that variant's own. Writes benchmarks/results/bench_step.json.

    python benchmarks/bench_step.py [--batch-size 32] [--steps 30] [--online-steps 6] [--threads 2] [--device cpu]
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

PAIRS = {"tiny": ("tiny-vit-teacher", "tiny-vit-student"), "vitb32": ("ViT-B-32", "tiny-vit-student"),
         "vitl14-vits16": ("ViT-L-14", "ViT-S-16")}  # the paper's pair: seconds per CPU step, so not a default
DEFAULT_PAIRS = ("tiny", "vitb32")
VARIANTS = ("floor", "cifd_cached", "cifd_cached_exp", "cifd_online", "openclip_online")
PHASES = ("student_forward", "teacher_forward", "rdm_forward", "method", "backward", "optimizer")
RATES = [1e2, 1e3, 1e4]
WARMUP = 2
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


class Variant:
    """One variant's module, optimizer and batch, and a step timed phase by phase."""

    def __init__(self, pair: str, variant: str, batch_size: int, device: str, generator_norm: float = 0.0):
        import open_clip
        import torch
        from cifd_clip.distill.distiller import Distiller
        from cifd_clip.distill.settings import LossSettings
        from cifd_clip.engine.schedule import make_optimizer
        from cifd_clip.core.rdm import RDMFamily
        from cifd_clip.clip_models import Teacher, load_model, register_model_configs

        teacher_name, student_name = PAIRS[pair]
        register_model_configs()
        torch.manual_seed(0)
        self.torch, self.device, self.name = torch, device, variant
        student = load_model(student_name, device=device)
        online = variant in ("cifd_online", "openclip_online")
        # random init, no download; the cached variants never build the teacher, only read its config
        teacher_tower = load_model(teacher_name, device=device) if online else None
        teacher = Teacher(teacher_tower) if online else None
        d = int(open_clip.get_model_config(teacher_name)["embed_dim"])
        rdm = RDMFamily.build({"image": d, "text": d}, RATES, hidden_dim=256, bottleneck_dim=64).eval() \
            if variant.startswith("cifd") else None
        loss = {"floor": "contrastive", "openclip_online": "distill_clip"}.get(variant, "cifd")
        settings = LossSettings(loss=loss, **({"ibm_orthogonal_map": "matrix_exp"} if variant.endswith("_exp") else {}))
        self.module = Distiller.build(student.model, settings, student_dim=student.embed_dim,
                                      teacher_dims=None if loss == "contrastive" else (d, d), teacher=teacher,
                                      rdm=rdm).to(device).train()
        if generator_norm and loss == "cifd":
            # a trained decoder's generator instead of the initial one (A = 0): the exponential's cost grows with ‖A‖
            original = self.module.method.decoders[0].map.parametrizations.weight.original
            with torch.no_grad():
                original.copy_(torch.randn(original.shape, generator=torch.Generator().manual_seed(0)))
                tall = (original if original.shape[0] >= original.shape[1] else original.mT).tril()
                a = torch.cat([tall, tall.new_zeros(tall.shape[0], tall.shape[0] - tall.shape[1])], 1)
                original.mul_(generator_norm / (a - a.mT).abs().sum(0).max())
        self.optimizer = make_optimizer(self.module)
        self.batch = _batch(student, teacher_tower, d, batch_size, online, device)
        self.info = {"pair": pair, "variant": variant, "teacher": teacher_name, "student": student_name}

    def _mark(self, times: dict, phase: str, start: float) -> float:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()
        now = time.perf_counter()
        times[phase] = times.get(phase, 0.0) + now - start
        return now

    def step(self) -> dict:
        """One training step as `Distiller.forward` + the loop run it, with the time of each phase."""
        torch, m, batch = self.torch, self.module, self.batch
        times: dict = {}
        t = self._mark({}, "-", time.perf_counter())
        start, cpu_start = t, time.process_time()
        student = m.encode(batch)
        t = self._mark(times, "student_forward", t)
        if not m.method.needs_teacher:
            terms = m.method(student, None, m._kd_generator)
        else:
            with torch.autocast(student.image.device.type, enabled=False):
                rdm, m._frozen["rdm"] = m.rdm, None
                try:
                    targets = m.targets(batch, student.image.device)  # the teacher's part (online or cached)
                finally:
                    m._frozen["rdm"] = rdm
                t = self._mark(times, "teacher_forward", t)
                if rdm is not None:
                    targets.rdm_image = rdm.teach("image", targets.image)
                    targets.rdm_text = rdm.teach("text", targets.text)
                t = self._mark(times, "rdm_forward", t)
                terms = m.method(student.float(), targets, m._kd_generator)
        loss = sum(terms.values())
        t = self._mark(times, "method", t)
        loss.backward()
        t = self._mark(times, "backward", t)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t = self._mark(times, "optimizer", t)
        times["step"] = t - start
        times["cpu"] = time.process_time() - cpu_start  # this process's CPU time, all threads
        return times


def time_pair(pair: str, args) -> list[dict]:
    """Every variant of a pair in this process, taking turns step by step; returns one row per variant."""
    variants = [Variant(pair, v, args.batch_size, args.device, args.generator_norm) for v in args.variants]
    rounds = {v.name: (args.steps if "online" not in v.name else min(args.steps, args.online_steps)) for v in variants}
    for v in variants:
        for _ in range(WARMUP):
            v.step()
    samples: dict = {v.name: [] for v in variants}
    for r in range(args.steps):
        # rotate who goes first, so that no variant always follows the same one
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            if r < rounds[v.name]:
                samples[v.name].append(v.step())
    floor = samples.get("floor")
    rows = []
    for v in variants:
        runs = samples[v.name]
        row = dict(v.info, timed_steps=len(runs), step_s=statistics.median(s["step"] for s in runs),
                   cpu_s=statistics.median(s["cpu"] for s in runs),
                   phases_s={p: statistics.median(s.get(p, 0.0) for s in runs) for p in PHASES})
        if floor:
            row["time_ratio"] = statistics.median(s["step"] / f["step"] for s, f in zip(runs, floor))
            row["time_ratios"] = [s["step"] / f["step"] for s, f in zip(runs, floor)]
            row["cpu_ratio"] = statistics.median(s["cpu"] / f["cpu"] for s, f in zip(runs, floor))
        rows.append(row)
    return rows


def peak_memory(pair: str, variant: str, args) -> float:
    """A few steps of one variant alone in this process; its peak memory in MB."""
    import torch
    v = Variant(pair, variant, args.batch_size, args.device, args.generator_norm)
    for _ in range(WARMUP + 1):
        v.step()
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return peak / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed rounds (one step of each variant per round)")
    parser.add_argument("--online-steps", type=int, default=6,
                        help="timed rounds of the online variants (a ViT-B-32 teacher step takes seconds on a CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), choices=list(PAIRS),
                        help="vitl14-vits16 (the paper's ViT-L-14 -> ViT-S-16, 224 px) takes seconds per step on a CPU: "
                             "give it a small --batch-size and --steps")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--generator-norm", type=float, default=0.0,
                        help="start the isometric decoder at a generator A with this 1-norm, as a trained one has "
                             "(the demo's CIFD student ends near 3.5), instead of A = 0")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory processes")
    parser.add_argument("--output", default=str(RESULTS / "bench_step.json"))
    parser.add_argument("--pair-timing", metavar="PAIR", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("PAIR", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps({"peak_mem_mb": peak_memory(args.one[0], args.one[1], args)}))
        return
    if args.pair_timing:
        print(json.dumps(time_pair(args.pair_timing, args)))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    common = ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--online-steps",
              str(args.online_steps), "--threads", str(args.threads), "--device", args.device, "--generator-norm",
              str(args.generator_norm), "--variants", *args.variants]

    def child(*extra: str):
        out = subprocess.run([sys.executable, __file__, *extra, *common], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"bench_step child {' '.join(extra)} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = []
    for pair in args.pairs:
        pair_rows = child("--pair-timing", pair)  # a fresh process per pair: one pair's teacher never slows the other
        for row in pair_rows:
            row["peak_mem_mb"] = None if args.no_memory else child("--one", pair, row["variant"])["peak_mem_mb"]
        floor = next((r for r in pair_rows if r["variant"] == "floor"), None)
        for row in pair_rows:
            if floor is not None and row["peak_mem_mb"] is not None:
                row["mem_ratio"] = row["peak_mem_mb"] / floor["peak_mem_mb"]
        rows += pair_rows

    print(f"batch {args.batch_size}, {args.threads} threads, {args.device}, decoder generator 1-norm "
          f"{args.generator_norm:g}; {args.steps} interleaved rounds "
          f"({args.online_steps} for online variants) after {WARMUP} warm-up steps; medians; × floor = median of "
          f"the per-round ratios to the student-only step")
    head = (f"{'pair':7} {'variant':16} {'step ms':>8} {'× floor':>8} {'CPU ×':>6} {'mem ×':>6}  "
            + " ".join(f"{p.replace('_forward', ' fwd'):>11}" for p in PHASES))
    print(head + "\n" + "-" * len(head))
    for row in rows:
        mem = f"{row['mem_ratio']:6.2f}" if row.get("mem_ratio") is not None else f"{'-':>6}"
        ratio = f"{row['time_ratio']:8.3f}" if "time_ratio" in row else f"{'-':>8}"
        cpu = f"{row['cpu_ratio']:6.2f}" if "cpu_ratio" in row else f"{'-':>6}"
        print(f"{row['pair']:7} {row['variant']:16} {1000 * row['step_s']:8.1f} {ratio} {cpu} {mem}  "
              + " ".join(f"{1000 * row['phases_s'][p]:11.1f}" for p in PHASES))
    print("(phases in ms: medians per phase, so they need not add up to the median step)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in ("one", "pair_timing")},
                               "torch": torch.__version__, "phases": list(PHASES), "rows": rows}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
