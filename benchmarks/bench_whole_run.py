"""Whole-run cost at demo scale: CIFD vs a TAKD-style run vs plain KD, each stage a real `cifd-clip` process.

Runs (same student tiny-vit-student, epochs, batch size, workers and threads in every student stage):
  cifd   embed (teacher once over the data) -> train-rdm (3 rates) -> distill --loss cifd --cache --rdm
  takd   distill tiny-vit-ta from the teacher online (--loss distill_clip --teacher-online), then the
         student from that teacher assistant online (same loss)
  kd     distill --loss distill_clip --teacher --teacher-online (open_clip-style: teacher forward every step)
The teacher (tiny-vit-teacher, `cifd-clip train`) and the demo data (`cifd-clip make-demo-data`) are made once
up front and are not counted: all three runs start from the same trained teacher.

Per stage: wall time of the whole process (start-up, data loading and checkpoint writing included), peak
memory (the process's max RSS from the kernel via wait4, and the max of the summed RSS of the process and
its DataLoader workers, sampled every 50 ms with psutil), and MACs: one representative step (or teacher
forward) of that stage is re-run in this process under torch.utils.flop_counter.FlopCounterMode, divided
by its batch size and multiplied by the number of samples the stage really processed (read from the stage's
own outputs). FlopCounterMode counts matmul/conv/attention FLOPs (2 per MAC), forward and backward; the
elementwise work (activations, norms, the optimizer step) and data decoding are not counted.

    .venv/bin/python benchmarks/bench_whole_run.py [--train-samples 2000] [--epochs 3] [--batch-size 64]
        [--threads 2] [--workers 1] [--quick] [--workdir DIR] [--keep]

Prints a table with ratios to plain KD and saves benchmarks/results/bench_whole_run.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
TEACHER, TA, STUDENT = "tiny-vit-teacher", "tiny-vit-ta", "tiny-vit-student"
RUNS = {"kd": ("student-kd",), "cifd": ("embed", "train-rdm", "student-cifd"), "takd": ("ta", "student-from-ta")}
RUN_TITLES = {"kd": "plain KD (teacher online)", "cifd": "CIFD (embed + RDMs + cached student)",
              "takd": "TAKD-style (TA online, student from TA online)"}
QUICK = dict(train_samples=192, epochs=1, batch_size=32, teacher_epochs=1, rdm_epochs=1, rdm_hidden_dim=64,
             rdm_bottleneck_dim=16, rdm_batch_size=64, samples_per_shard=96)


# ----------------------------------------------------------------------------------------------- stages

def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (every process, ours or not), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal, not guest (already in user)


def run_stage(name: str, argv: list[str], env: dict, log_dir: Path) -> dict:
    """Run `python -m cifd_clip ARGV` and measure its wall time and peak memory; raise with the log tail on failure."""
    import psutil

    log_file = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "cifd_clip", *argv]
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        start, busy0 = time.perf_counter(), busy_cpu_s()
        self0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        root = psutil.Process(proc.pid)
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            try:
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                tree_peak = max(tree_peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - start
        busy = busy_cpu_s() - busy0
        self_cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - self0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen from waiting again
    if proc.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"stage {name} failed with exit code {proc.returncode}; log {log_file}:\n{tail}")
    return {"stage": name, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
            "peak_tree_rss_mb": tree_peak / 2 ** 20, "cpu_s": usage.ru_utime + usage.ru_stime,
            # CPU time the machine spent on anything but this stage (and this bench's own polling): a check that
            # nothing else ran; more than a few seconds means the stage's wall time is not to be trusted
            "foreign_cpu_s": busy - (usage.ru_utime + usage.ru_stime) - self_cpu,
            "command": "cifd-clip " + " ".join(argv)}


def student_options(args, logs: Path) -> list[str]:
    """The options every student-stage run shares (the demo recipes' values, sized by the CLI flags)."""
    return ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", "0.002", "--wd", "0.1",
            "--warmup", "20", "--workers", str(args.workers), "--seed", "0", "--device", "cpu", "--precision", "fp32",
            "--log-every-steps", "1", "--logs", str(logs)]


def step_times(metrics: Path, batch_size: int) -> dict:
    """Median and max step time from the stage's metrics.jsonl (a disturbed machine shows as max >> median)."""
    import statistics
    times = [batch_size / row["samples_per_s"] for row in map(json.loads, metrics.read_text().splitlines())
             if row.get("samples_per_s")]
    if not times:
        return {}
    return {"median_step_s": statistics.median(times), "max_step_s": max(times), "logged_steps": len(times)}


# ----------------------------------------------------------------------------------------------- MACs

def _macs(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def _image_size(tower) -> int:
    size = tower.preprocess_cfg["size"]
    return size if isinstance(size, int) else size[0]


def teacher_forward_macs_per_sample(spec: str, batch: int = 8) -> float:
    """An embed-stage teacher forward (image + text, eval, no grad) per sample."""
    import torch
    from cifd_clip.clip_models import load_teacher
    teacher = load_teacher(spec)
    images = torch.randn(batch, 3, _image_size(teacher.tower), _image_size(teacher.tower))
    tokens = torch.randint(1, 49000, (batch, teacher.tower.model_cfg["text_cfg"]["context_length"]))
    return _macs(lambda: (teacher.encode_image(images), teacher.encode_text(tokens))) / batch


def rdm_train_macs_per_sample(rdm_path: Path, batch: int = 64) -> float:
    """One train-rdm step of the whole family (every RDM of both modalities), forward + backward, per sample."""
    import torch
    import torch.nn.functional as F
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.rdm.training import family_loss
    family = RDMFamily.load(rdm_path).train()
    dims = {m: family.rdms(m)[0].config.input_dim for m in family.modalities}
    data = {"t_image_emb": F.normalize(torch.randn(batch, dims["image"]), dim=-1),
            "t_text_emb": F.normalize(torch.randn(batch, dims["text"]), dim=-1)}
    return _macs(lambda: family_loss(family, data)[0].backward()) / batch


def student_step_macs(loss: str, student: str, batch: int, *, teacher: str | None = None,
                      cache_dims: tuple[int, int] | None = None, rdm_path: Path | None = None) -> float:
    """One `cifd-clip distill` step as the CLI builds it: Distiller forward (with an online teacher's forward) + backward."""
    import torch
    import torch.nn.functional as F
    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.clip_models import load_model, load_teacher

    torch.manual_seed(0)
    tower = load_model(student)
    t = load_teacher(teacher) if teacher else None
    rdm = RDMFamily.load(rdm_path) if rdm_path else None
    dims = (t.embed_dim, t.embed_dim) if t is not None else cache_dims
    module = Distiller.build(tower.model, LossSettings(loss=loss), student_dim=tower.embed_dim, teacher_dims=dims,
                             teacher=t, rdm=rdm).train()
    size, ctx = _image_size(tower), tower.model_cfg["text_cfg"]["context_length"]
    data = {"image": torch.randn(batch, 3, size, size), "text": torch.randint(1, 49000, (batch, ctx))}
    if t is not None:
        t_size, t_ctx = _image_size(t.tower), t.tower.model_cfg["text_cfg"]["context_length"]
        data.update(teacher_image=torch.randn(batch, 3, t_size, t_size),
                    teacher_text=torch.randint(1, 49000, (batch, t_ctx)))
    else:
        data.update(t_image_emb=F.normalize(torch.randn(batch, dims[0]), dim=-1),
                    t_text_emb=F.normalize(torch.randn(batch, dims[1]), dim=-1))
    return _macs(lambda: sum(module(data).values()).backward())


# ----------------------------------------------------------------------------------------------- extrapolation

PER_EPOCH_STAGES = ("student-kd", "student-cifd", "ta", "student-from-ta")  # their work grows with --epochs


def extrapolate(stages: dict, runs: dict, epochs: int, at=(10, 32)) -> dict:
    """Split each run into a fixed cost and a cost per student epoch and evaluate the ratios at other epoch counts.

    Fixed: embed and train-rdm (whole stages: the teacher pass is once, the RDM epochs are their own setting) and
    the part of each training stage's wall time outside its training loop (start-up, loading, final writes).
    Per epoch: each training stage's loop time (or MACs) divided by --epochs. A model of this run, not a measurement.
    """
    cost = {}
    for run, r in runs.items():
        fixed_s = fixed_m = per_s = per_m = 0.0
        for name in r["stages"]:
            st = stages[name]
            if name in PER_EPOCH_STAGES:
                fixed_s += st["wall_s"] - st["loop_s"]
                per_s += st["loop_s"] / epochs
                per_m += st["macs"] / epochs
            else:
                fixed_s += st["wall_s"]
                fixed_m += st["macs"]
        cost[run] = {"wall_s": (fixed_s, per_s), "macs": (fixed_m, per_m)}

    def total(run, key, e):
        fixed, per = cost[run][key]
        return fixed + e * per

    ratios = {str(e): {base: {key: total("cifd", key, e) / total(base, key, e) for key in ("wall_s", "macs")}
                       for base in ("kd", "takd")} for e in sorted({epochs, *at})}
    ratios["limit"] = {base: {key: cost["cifd"][key][1] / cost[base][key][1] for key in ("wall_s", "macs")}
                       for base in ("kd", "takd")}
    break_even = {}
    for base, bound in (("kd", 1.1), ("takd", 0.5)):
        for key in ("wall_s", "macs"):
            (fc, ec), (fb, eb) = cost["cifd"][key], cost[base][key]
            # fc + E ec < bound (fb + E eb)  <=>  E (bound eb - ec) > fc - bound fb
            slope, gap = bound * eb - ec, fc - bound * fb
            if slope > 0:  # holds from the first integer E > gap / slope on
                e = max(1, math.floor(gap / slope) + 1)
            else:  # the per-epoch cost is not below the bound: it holds for every E (gap < 0 = slope) or not for long
                e = 1 if (slope == 0 and gap < 0) else None
            break_even[f"cifd<{bound:g}x{base} ({'wall' if key == 'wall_s' else 'MACs'})"] = e
    return {"fixed_and_per_epoch": {run: {k: {"fixed": v[0], "per_epoch": v[1]} for k, v in c.items()}
                                    for run, c in cost.items()},
            "ratios": ratios, "break_even_epochs": break_even}


def count_params(spec: str) -> int:
    from cifd_clip.clip_models import load_model
    return sum(p.numel() for p in load_model(spec).model.parameters())


def print_report(result: dict) -> None:
    st, runs, stages, headline = result["settings"], result["runs"], result["stages"], result["headline"]
    extrapolated = result["extrapolated"]
    params, fwd = result["models"]["params"], result["models"]["forward_macs_per_sample"]
    print(f"\nwhole run at demo scale: {st['train_samples']} pairs, {st['epochs']} epochs, batch {st['batch_size']}, "
          f"{st['threads']} threads, {st['workers']} loader worker(s), CPU")
    head = f"{'run / stage':24s} {'wall s':>8s} {'GMACs':>9s} {'peak RSS MB':>12s} {'+workers MB':>12s}"
    print(head + "\n" + "-" * len(head))
    for run, names in RUNS.items():
        r = runs[run]
        print(f"{run:24s} {r['wall_s']:8.1f} {r['macs'] / 1e9:9.1f} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_tree_rss_mb']:12.0f}")
        for n in names:
            s = stages[n]
            print(f"  {n:22s} {s['wall_s']:8.1f} {s['macs'] / 1e9:9.1f} {s['peak_rss_mb']:12.0f} "
                  f"{s['peak_tree_rss_mb']:12.0f}")
    head = f"{'ratio to plain KD':24s} {'wall':>8s} {'MACs':>9s} {'peak RSS':>12s}"
    print("\n" + head + "\n" + "-" * len(head))
    for run in RUNS:
        r = runs[run]
        print(f"{run:24s} {r['wall_s_vs_kd']:7.2f}x {r['macs_vs_kd']:8.2f}x {r['peak_rss_mb_vs_kd']:11.2f}x")
    print(f"{'cifd / takd':24s} {headline['cifd_vs_takd_wall_s']:7.2f}x {headline['cifd_vs_takd_macs']:8.2f}x "
          f"{headline['cifd_vs_takd_peak_rss_mb']:11.2f}x")
    print("\nextrapolated to more student epochs (NOT measured: this run's fixed and per-epoch costs, see README)")
    print(f"{'epochs':>8s} {'CIFD/KD wall':>13s} {'CIFD/KD MACs':>13s} {'CIFD/TAKD wall':>15s} {'CIFD/TAKD MACs':>15s}")
    for e, r in extrapolated["ratios"].items():
        print(f"{e:>8s} {r['kd']['wall_s']:12.2f}x {r['kd']['macs']:12.2f}x {r['takd']['wall_s']:14.2f}x "
              f"{r['takd']['macs']:14.2f}x")
    print("epochs from which the target holds: " + ", ".join(
        f"{k} {v if v is not None else 'never'}" for k, v in extrapolated["break_even_epochs"].items()))
    print(f"\nparameters: " + ", ".join(f"{m} {p / 1e6:.2f}M" for m, p in params.items())
          + "; forward MACs/sample: " + ", ".join(f"{m} {v / 1e6:.1f}M" for m, v in fwd.items()))
    if result["quick"]:
        print("QUICK sizes: a smoke test, not a measurement")


# ----------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=2000, help="demo training pairs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every student/TA stage")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of every student/TA stage")
    parser.add_argument("--teacher-epochs", type=int, default=2, help="training of the teacher (not counted)")
    parser.add_argument("--rdm-epochs", type=int, default=10)
    parser.add_argument("--rdm-hidden-dim", type=int, default=512)
    parser.add_argument("--rdm-bottleneck-dim", type=int, default=128)
    parser.add_argument("--rdm-batch-size", type=int, default=256)
    parser.add_argument("--embed-batch-size", type=int, default=128)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every stage")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of every stage")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    parser.add_argument("--workdir", help="where data, checkpoints and logs go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--output", default=str(RESULTS / "bench_whole_run.json"))
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)

    import torch
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_whole_run_"))
    if work.is_dir() and any(work.iterdir()):
        parser.error(f"--workdir {work} is not empty: the stages would refuse to overwrite its runs")
    work.mkdir(parents=True, exist_ok=True)
    logs, stage_logs = work / "runs", work / "stage_logs"
    stage_logs.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    bench_start = time.perf_counter()

    def stage(name, argv):
        print(f"  {name:16s} ...", end=" ", flush=True)
        result = run_stage(name, argv, env, stage_logs)
        print(f"{result['wall_s']:7.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB, CPU {result['cpu_s']:.0f} s "
              f"(other processes on the machine: {max(0.0, result['foreign_cpu_s']):.1f} CPU s)", flush=True)
        return result

    # ---- set-up, not counted: demo data and a trained teacher
    print(f"set-up (not counted) in {work}")
    data = work / "data"
    setup = [stage("make-demo-data", ["make-demo-data", "--out", str(data), "--train-samples", str(args.train_samples),
                                      "--val-samples", "10", "--zeroshot-samples", "36", "--retrieval-samples", "10",
                                      "--samples-per-shard", str(args.samples_per_shard)])]
    info = json.loads((data / "demo_info.json").read_text())
    train_data = str(data / info["train_data"])
    setup.append(stage("teacher", ["train", "--model", TEACHER, "--train-data", train_data, "--name", "teacher",
                                   *student_options(args, logs), "--epochs", str(args.teacher_epochs)]))
    teacher_ckpt = logs / "teacher" / "checkpoints" / "epoch_latest.pt"
    teacher_spec = f"{TEACHER}@{teacher_ckpt}"

    # ---- the three runs
    cache, rdm_dir = work / "cache", work / "rdm"
    ta_ckpt = logs / "ta" / "checkpoints" / "epoch_latest.pt"
    argv = {
        "student-kd": ["distill", "--model", STUDENT, "--train-data", train_data, "--name", "student-kd",
                       "--loss", "distill_clip", "--teacher", teacher_spec, "--teacher-online",
                       *student_options(args, logs)],
        "embed": ["embed", "--teacher", teacher_spec, "--train-data", train_data, "--out", str(cache),
                  "--batch-size", str(args.embed_batch_size), "--workers", str(args.workers),
                  "--threads", str(args.threads), "--device", "cpu"],
        "train-rdm": ["train-rdm", "--cache", str(cache), "--rates", "100", "300", "1000",
                      "--epochs", str(args.rdm_epochs), "--batch-size", str(args.rdm_batch_size),
                      "--hidden-dim", str(args.rdm_hidden_dim), "--bottleneck-dim", str(args.rdm_bottleneck_dim),
                      "--out", str(rdm_dir), "--device", "cpu"],
        "student-cifd": ["distill", "--model", STUDENT, "--train-data", train_data, "--name", "student-cifd",
                         "--loss", "cifd", "--cache", str(cache), "--rdm", str(rdm_dir / "rdm.pt"),
                         "--lambda-cl", "1.0", *student_options(args, logs)],
        "ta": ["distill", "--model", TA, "--train-data", train_data, "--name", "ta", "--loss", "distill_clip",
               "--teacher", teacher_spec, "--teacher-online", *student_options(args, logs)],
        "student-from-ta": ["distill", "--model", STUDENT, "--train-data", train_data, "--name", "student-from-ta",
                            "--loss", "distill_clip", "--teacher", f"{TA}@{ta_ckpt}", "--teacher-online",
                            *student_options(args, logs)],
    }
    stages = {}
    for run, names in RUNS.items():
        print(f"{run}: {RUN_TITLES[run]}")
        for name in names:
            stages[name] = stage(name, argv[name])
    bench_wall = time.perf_counter() - bench_start

    # ---- samples each stage processed, from its own outputs
    def summary(name):
        return json.loads((logs / name / "summary.json").read_text())
    cache_meta = json.loads((cache / "cache.json").read_text())
    rdm_report = json.loads((rdm_dir / "rdm_eval.json").read_text())
    stages["embed"]["samples"] = int(cache_meta["num_samples"]) * int(cache_meta.get("augmentations", 1) or 1)
    stages["train-rdm"]["samples"] = int(rdm_report["train"]["samples"])
    stages["train-rdm"]["loop_s"] = float(rdm_report["train"]["seconds"])
    for name in ("student-kd", "student-cifd", "ta", "student-from-ta"):
        s = summary(name)
        stages[name]["steps"] = int(s["steps_this_run"])
        stages[name]["samples"] = int(s["steps_this_run"]) * args.batch_size
        stages[name]["loop_s"] = float(s["wall_time_s"])
        stages[name].update(step_times(logs / name / "metrics.jsonl", args.batch_size))

    # ---- MACs: one representative step/forward per stage, in this process, times the work really done
    print("counting MACs (FlopCounterMode, one step per stage) ...", flush=True)
    b = args.batch_size
    dims = (int(cache_meta["image_dim"]), int(cache_meta["text_dim"]))
    per_sample = {
        "embed": teacher_forward_macs_per_sample(teacher_spec),
        "train-rdm": rdm_train_macs_per_sample(rdm_dir / "rdm.pt"),
        "student-cifd": student_step_macs("cifd", STUDENT, b, cache_dims=dims, rdm_path=rdm_dir / "rdm.pt") / b,
        "student-kd": student_step_macs("distill_clip", STUDENT, b, teacher=teacher_spec) / b,
        "ta": student_step_macs("distill_clip", TA, b, teacher=teacher_spec) / b,
        "student-from-ta": student_step_macs("distill_clip", STUDENT, b, teacher=f"{TA}@{ta_ckpt}") / b,
    }
    for name, row in stages.items():
        row["macs_per_sample"] = per_sample[name]
        row["macs"] = per_sample[name] * row["samples"]
    params = {m: count_params(m) for m in (TEACHER, TA, STUDENT)}
    fwd = {m: teacher_forward_macs_per_sample(m) for m in (TEACHER, TA, STUDENT)}

    # ---- per run totals and ratios
    runs = {}
    for run, names in RUNS.items():
        rows = [stages[n] for n in names]
        runs[run] = {"title": RUN_TITLES[run], "stages": list(names),
                     "wall_s": sum(r["wall_s"] for r in rows), "macs": sum(r["macs"] for r in rows),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                     "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in rows),
                     "loop_s": sum(r.get("loop_s", 0.0) for r in rows)}
    for run in runs.values():
        for key in ("wall_s", "macs", "peak_rss_mb", "peak_tree_rss_mb"):
            run[f"{key}_vs_kd"] = run[key] / runs["kd"][key]
    headline = {f"cifd_vs_{base}_{key}": runs["cifd"][key] / runs[base][key]
                for base in ("kd", "takd") for key in ("wall_s", "macs", "peak_rss_mb")}
    extrapolated = extrapolate(stages, runs, args.epochs)

    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "keep", "output")},
              "quick": args.quick, "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "models": {"teacher": TEACHER, "ta": TA, "student": STUDENT, "params": params,
                         "forward_macs_per_sample": fwd},
              "setup_not_counted": setup, "stages": stages, "runs": runs, "headline": headline,
              "extrapolated": extrapolated,
              "bench_wall_s": bench_wall}
    print_report(result)
    disturbed = [f"{n} ({r['foreign_cpu_s']:.0f} CPU s)" for n, r in stages.items()
                 if r["foreign_cpu_s"] > max(3.0, 0.05 * r["wall_s"] * (os.cpu_count() or 1))]
    result["disturbed_stages"] = disturbed
    if disturbed:
        print("WARNING: other processes used the CPU during " + ", ".join(disturbed) + ": rerun on an idle machine")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out}")
    if args.keep or args.workdir:
        print(f"outputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
