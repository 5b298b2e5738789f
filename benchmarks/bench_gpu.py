"""GPU cost of one student training step at the paper's setting: CIFD with cached targets vs the alternatives.

For each student of the paper's CLIP recipes (ViT-S-16, RN50, ViT-B-16; teacher ViT-L-14, whose cached
image and text embeddings are 768-d), on the same batch, with the training loop's own speed settings
(`--precision auto` = amp_bf16 on CUDA, TF32, fused AdamW, channels_last for RN50; `cifd_clip.engine`):
  contrastive       student-only contrastive step (`cifd-clip train`; the floor)
  cifd_cached       CIFD (`cifd-clip distill --loss cifd`): teacher and RDM targets from cached 768-d embeddings,
                    a random-init RDM family of 3 rates per modality at the cache width, IBMs, isometric decoder
  openclip_distill  open_clip_train's `--distill-model` step: the frozen teacher's forward on every batch (the
                    same images and tokens, as open_clip_train feeds it) and open_clip's DistillClipLoss
Random-init models (`open_clip.create_model(name)`, no download). Each (student, variant) runs in its own process,
so its peak memory (torch.cuda.max_memory_allocated; max RSS on CPU) is its own. Reports samples/s per GPU
(batch / median step time after 3 warm-up steps) and the ratios to the floor; writes
benchmarks/results/bench_gpu.json.

    python benchmarks/bench_gpu.py [--batch-size 256] [--precision auto] [--steps 20] [--models ViT-S-16 RN50]
    python benchmarks/bench_gpu.py --quick     # tiny models, batch 8, 2 steps: a CPU smoke test of the script

Without a CUDA GPU and without --quick it says so and measures nothing (ViT-L-14 at batch 256 on a CPU would take
hours and say nothing about a GPU).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import _batch  # noqa: E402  (same folder; the random batch of the step benchmark)

RESULTS = Path(__file__).resolve().parent / "results"
TEACHER = "ViT-L-14"
STUDENTS = ["ViT-S-16", "RN50", "ViT-B-16"]
QUICK_TEACHER = "tiny-vit-teacher"
QUICK_STUDENTS = ["tiny-vit-student", "tiny-rn-student"]
VARIANTS = ("contrastive", "cifd_cached", "openclip_distill")
RATES = [100.0, 300.0, 1000.0]  # recipes/clip's train-rdm rates; random init, so only the shapes matter here
WARMUP = 3


def measure(student_name: str, teacher_name: str, variant: str, args) -> dict:
    """Time `args.steps` optimizer steps (after the warm-up) of one variant in this process."""
    import open_clip
    import torch

    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.engine.loop import apply_speed_settings, to_device
    from cifd_clip.engine.precision import autocast, resolve_speed_settings
    from cifd_clip.engine.schedule import make_optimizer
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.clip_models import Teacher, is_convolutional, load_model, register_model_configs

    register_model_configs()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    student = load_model(student_name, device="cpu")
    d = int(open_clip.get_model_config(teacher_name)["embed_dim"])  # the cache's width
    online = variant == "openclip_distill"
    teacher = Teacher(load_model(teacher_name, device="cpu")) if online else None  # cached: never built
    # the loop's settings, resolved as `cifd-clip distill` resolves them
    speed = resolve_speed_settings(args, device, convolutional=is_convolutional(student.model),
                                   grad_checkpointing_ok=True)
    if variant == "openclip_distill":
        module = student.model
    else:
        settings = LossSettings(loss="contrastive" if variant == "contrastive" else "cifd")
        rdm = RDMFamily.build({"image": d, "text": d}, RATES) if variant == "cifd_cached" else None
        module = Distiller.build(student.model, settings, student_dim=student.embed_dim,
                                 teacher_dims=None if rdm is None else (d, d), rdm=rdm, seed=0)
    module.to(device)
    if teacher is not None:
        teacher.to(device)
        if speed.channels_last and is_convolutional(teacher.model):
            teacher.to(memory_format=torch.channels_last)
    compiled = apply_speed_settings(module, speed, device)
    optimizer = make_optimizer(module, fused=speed.fused_optimizer)
    scaler = torch.amp.GradScaler("cuda") if speed.precision == "amp" and cuda else None
    batch = _batch(student, teacher.tower if teacher else None, d, args.batch_size, online, "cpu")
    if online and batch["teacher_image"].shape == batch["image"].shape:
        batch["teacher_image"] = batch["image"]  # open_clip_train feeds the teacher the student's images
    if online and batch["teacher_text"].shape == batch["text"].shape:
        batch["teacher_text"] = batch["text"]
    if speed.pin_memory:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    distill_loss = open_clip.loss.DistillClipLoss() if online else None

    def step():
        b = to_device(batch, device, speed.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(speed.precision, device):
            if online:  # open_clip_train's train_one_epoch with --distill-model
                image = module.encode_image(b["image"], normalize=True)
                text = module.encode_text(b["text"], normalize=True)
                with torch.no_grad():
                    t_image = teacher.encode_image(b["teacher_image"])
                    t_text = teacher.encode_text(b["teacher_text"])
                loss = sum(distill_loss(image, text, module.logit_scale.exp(), t_image, t_text,
                                        teacher.model.logit_scale.exp()))
            else:
                loss = sum(module(b).values())
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return loss

    times = []
    for i in range(WARMUP + args.steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = float(step().detach())  # the loop waits for its loss terms once per step too
        if cuda:
            torch.cuda.synchronize(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    step_s = statistics.median(times)
    return {"student": student_name, "teacher": teacher_name, "variant": variant, "step_s": step_s,
            "samples_per_s_per_gpu": args.batch_size / step_s, "peak_mem_mb": peak / 2 ** 20, "loss": loss,
            "speed_settings": speed.to_dict(), "compiled": compiled,
            "params_m": sum(p.numel() for p in student.model.parameters()) / 1e6}


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="per GPU (the paper: 1024 = 4 x 256)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "amp", "amp_bf16"],
                        help="as the training loop's --precision (auto: amp_bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after 3 warm-up steps")
    parser.add_argument("--models", nargs="+", default=None, help=f"students (default: {' '.join(STUDENTS)})")
    parser.add_argument("--teacher", default=None, help=f"the teacher whose width the cache has (default {TEACHER})")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda, cuda:N or cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--torchcompile", action="store_true", help="compile the student's towers")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny models ({' '.join(QUICK_STUDENTS)}; teacher {QUICK_TEACHER}), batch 8, 2 steps")
    parser.add_argument("--out", default=str(RESULTS / "bench_gpu.json"))
    parser.add_argument("--one", nargs=2, metavar=("STUDENT", "VARIANT"), help=argparse.SUPPRESS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_options(parser)
    args = parser.parse_args(argv)
    import torch
    if args.quick:
        args.batch_size, args.steps = min(args.batch_size, 8), min(args.steps, 2)
        args.models = args.models or QUICK_STUDENTS
        args.teacher = args.teacher or QUICK_TEACHER
    args.models, args.teacher = args.models or STUDENTS, args.teacher or TEACHER
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], args.teacher, args.one[1], args)))
        return 0
    if args.device == "cpu" and not args.quick:
        print("bench_gpu: no CUDA GPU here; nothing measured (run it on a GPU, or with --quick for a CPU smoke test "
              "of the script at tiny sizes)")
        return 0
    rows = []
    for student in args.models:
        for variant in args.variants:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", student, variant]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.device == "cpu" else dict(os.environ)
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{student} {variant} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        floor = next((r for r in rows if r["student"] == row["student"] and r["variant"] == "contrastive"), None)
        row["time_ratio"] = row["step_s"] / floor["step_s"] if floor else None
        row["mem_ratio"] = row["peak_mem_mb"] / floor["peak_mem_mb"] if floor else None
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    print(f"{device_name}, batch {args.batch_size} per GPU, {args.steps} timed steps; teacher {args.teacher} (cached "
          f"targets {_width(args.teacher)}-d); x floor: the ratio to the student-only contrastive step")
    print(f"{'student':18} {'variant':17} {'step ms':>9} {'samples/s/GPU':>14} {'x floor':>8} {'peak MiB':>9} "
          f"{'x floor':>8}  settings")
    for row in rows:
        ratio = f"{row['time_ratio']:8.2f}" if row["time_ratio"] is not None else f"{'':8}"
        mem = f"{row['mem_ratio']:8.2f}" if row["mem_ratio"] is not None else f"{'':8}"
        print(f"{row['student']:18} {row['variant']:17} {1000 * row['step_s']:9.1f} "
              f"{row['samples_per_s_per_gpu']:14.1f} {ratio} {row['peak_mem_mb']:9.0f} {mem}  "
              f"{_describe(row['speed_settings'])}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "one"},
                               "device_name": device_name, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"saved {out}")
    return 0


def _width(teacher: str) -> int:
    import open_clip

    from cifd_clip.clip_models import register_model_configs
    register_model_configs()
    return int(open_clip.get_model_config(teacher)["embed_dim"])


def _describe(settings: dict) -> str:
    if not settings:
        return ""
    from cifd_clip.engine.precision import SpeedSettings
    return SpeedSettings(**settings).describe()


if __name__ == "__main__":
    sys.exit(main())
