"""Whole-process cost of distilling from the embedding cache against plain training of the same student.

Makes demo data and a cache up front (a 1-epoch `tiny-rn-teacher` and `cifd-clip embed`; not counted), then
runs, as separate `python -m cifd_clip` processes interleaved round after round (A B C A B C ...):
  train       cifd-clip train --model STUDENT                              (the baseline of every ratio)
  distill_clip  cifd-clip distill --loss distill_clip --cache CACHE
  cifd        cifd-clip distill --loss cifd --cache CACHE                 (no RDMs: the teacher term and IBMs)
with the same student, shards, epochs, batch size, workers, threads and precision. Per run: wall time of the
whole process, its CPU time (the process and its DataLoader workers, from wait4) and the loop's own time
(summary.json `wall_time_s`). Ratios are taken per round against that round's `train` run; the table shows
their medians (timings on a shared 2-core machine are noisy: compare ratios, not absolute times).

The package run is the one Python imports (the checkout, or PYTHONPATH's when set); `--code NAME=DIR` adds the
same runs (train included: each code's ratios are to its own train run) with the `cifd_clip` package of source
tree DIR (put first on PYTHONPATH), e.g. a `git archive` of an older commit, to compare code versions in one run.
`--rdm` adds `cifd_rdm`: distill --loss cifd with a 3-rate RDM family (trained once up front, not counted).

Online distillation next to open_clip_train: `--variants ... online oc_train oc_distill` adds
  online      cifd-clip distill --loss distill_clip --teacher tiny-rn-teacher --teacher-online (the 1-epoch teacher)
  oc_train    open_clip_train's main: plain training of the same student on the same shards and settings
  oc_distill  open_clip_train's main with --distill-model tiny-rn-teacher --distill-pretrained (the same teacher)
and a second table of per-round wall-time ratios between them (ours ÷ open_clip_train's). open_clip_train runs
with `--open-clip-python PY`, the Python of an environment where its webdataset loader works (it fails with
webdataset >= 0.2.111, which this project's environment has: `KeyError: 'fname'`), with our tiny model configs
registered (open_clip.add_model_config) before its main(); its wall time includes its per-epoch checkpoints, as
ours does.

    .venv/bin/python benchmarks/bench_distill_vs_train.py [--rounds 3] [--epochs 3] [--workers 1]
        [--code before=/tmp/base] [--variants train distill_clip cifd] [--quick]

Saves benchmarks/results/bench_distill_vs_train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


OPEN_CLIP_RUNNER = """import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""
PAIRS = [("train", "oc_train"), ("online", "oc_distill"), ("online", "train"), ("oc_distill", "oc_train")]


def run(argv: list[str], env: dict, log: Path, cmd: list[str] | None = None) -> dict:
    cmd = [*(cmd or [sys.executable, "-m", "cifd_clip"]), *argv]
    # not from the checkout's root: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="tiny-rn-student")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every variant once)")
    parser.add_argument("--variants", nargs="+", default=["train", "distill_clip", "cifd"])
    parser.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                        help="also run the distill variants with the cifd_clip package of source tree DIR")
    parser.add_argument("--rdm", action="store_true", help="add distill --loss cifd --rdm (the demo's 3 RDMs, at "
                        "train-rdm's default widths, trained up front for 2 epochs and not counted)")
    parser.add_argument("--open-clip-python", default=sys.executable,
                        help="the Python that runs open_clip_train for oc_train/oc_distill (see the module doc)")
    parser.add_argument("--workdir", help="keep data, cache and logs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--output", default=str(RESULTS / "bench_distill_vs_train.json"))
    args = parser.parse_args()
    if args.quick:
        args.train_samples, args.samples_per_shard, args.epochs, args.rounds, args.batch_size = 256, 64, 1, 1, 32
        if args.output == str(RESULTS / "bench_distill_vs_train.json"):
            args.output = str(RESULTS / "quick" / "bench_distill_vs_train.json")

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    data = work / "demo"
    if not (data / "demo_info.json").is_file():
        run(["make-demo-data", "--out", str(data), "--train-samples", str(args.train_samples), "--samples-per-shard",
             str(args.samples_per_shard)], env, logs / "data.log")
    info = json.loads((data / "demo_info.json").read_text())
    shards = str(data / info["train_data"])
    common = ["--train-data", shards, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
              "--device", "cpu", "--precision", "fp32", "--seed", "0"]
    teacher = work / "runs" / "teacher" / "checkpoints" / "epoch_latest.pt"
    if not teacher.is_file():
        run(["train", "--model", "tiny-rn-teacher", "--epochs", "1", "--logs", str(work / "runs"), "--name", "teacher",
             *common], env, logs / "teacher.log")
    cache = work / "cache"
    if not (cache / "cache.json").is_file():
        run(["embed", "--teacher", "tiny-rn-teacher", "--pretrained", str(teacher), "--train-data", shards, "--out",
             str(cache), "--batch-size", "128", "--workers", str(args.workers), "--device", "cpu", "--threads",
             str(args.threads)], env, logs / "embed.log")

    rdm = work / "rdm.pt"
    if args.rdm and not rdm.is_file():
        run(["train-rdm", "--cache", str(cache), "--out", str(rdm), "--epochs", "2", "--device", "cpu"], env,
            logs / "rdm.log")

    student = ["--model", args.student, "--epochs", str(args.epochs), "--lr", "0.002", "--wd", "0.1", *common]
    commands = {"train": ["train", *student],
                "distill_clip": ["distill", "--loss", "distill_clip", "--cache", str(cache), *student],
                "cifd": ["distill", "--loss", "cifd", "--cache", str(cache), *student],
                "cifd_rdm": ["distill", "--loss", "cifd", "--cache", str(cache), "--rdm", str(rdm), *student],
                "online": ["distill", "--loss", "distill_clip", "--teacher", "tiny-rn-teacher", "--teacher-pretrained",
                           str(teacher), "--teacher-online", *student]}
    runner = work / "open_clip_train_runner.py"
    runner.write_text(OPEN_CLIP_RUNNER)
    configs = Path(__file__).resolve().parents[1] / "cifd_clip" / "model_configs"
    oc_cmd = [args.open_clip_python, str(runner), str(configs)]
    oc_student = ["--model", args.student, "--epochs", str(args.epochs), "--lr", "0.002", "--wd", "0.1",
                  "--train-data", shards, "--train-num-samples", str(info["splits"]["train"]["samples"]),
                  "--dataset-type", "webdataset", "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                  "--precision", "fp32", "--seed", "0", "--warmup", "10", "--report-to", ""]
    oc_commands = {"oc_train": oc_student,
                   "oc_distill": [*oc_student, "--distill-model", "tiny-rn-teacher", "--distill-pretrained", str(teacher)]}
    if args.rdm and "cifd_rdm" not in args.variants:
        args.variants.append("cifd_rdm")
    variants = [(v, commands[v], env, "train") for v in args.variants if v in commands]
    variants += [(v, oc_commands[v], env, "oc_train" if "oc_train" in args.variants else v) for v in args.variants
                 if v in oc_commands]
    for spec in args.code:
        name, _, path = spec.partition("=")
        other = dict(env, PYTHONPATH=str(Path(path).resolve()))
        variants += [(f"{v} [{name}]", commands[v], other, f"train [{name}]") for v in args.variants]
    if "train" not in args.variants:
        variants = [(n, a, e, variants[0][0]) for n, a, e, _ in variants]

    rows = {name: [] for name, _, _, _ in variants}
    baseline_of = {name: base for name, _, _, base in variants}
    for r in range(args.rounds):
        for i, (name, argv, venv, _) in enumerate(variants):
            run_name = f"r{r}-{i}"
            ours = name not in oc_commands
            res = run([*argv, "--logs", str(work / "runs"), "--name", run_name], venv, logs / f"{run_name}.log",
                      None if ours else oc_cmd)
            # open_clip_train writes no loop time: its row's loop column repeats the wall time
            res["loop_s"] = (json.loads((work / "runs" / run_name / "summary.json").read_text())["wall_time_s"]
                             if ours else res["wall_s"])
            rows[name].append(res)
            print(f"round {r} {name:28s} wall {res['wall_s']:6.1f} s  cpu {res['cpu_s']:6.1f} s  loop {res['loop_s']:6.1f} s",
                  flush=True)
            import shutil
            shutil.rmtree(work / "runs" / run_name, ignore_errors=True)

    table = []
    for name, runs in rows.items():
        row = {"variant": name, "baseline": baseline_of[name], "runs": runs}
        for key in ("wall_s", "cpu_s", "loop_s"):
            row[key] = statistics.median(x[key] for x in runs)
            row[f"{key}_ratio"] = statistics.median(x[key] / b[key] for x, b in zip(runs, rows[baseline_of[name]]))
        table.append(row)
    print(f"\n{args.student}, {args.train_samples} samples, {args.epochs} epochs, batch {args.batch_size}, "
          f"{args.workers} worker(s), {args.threads} threads, fp32; medians of {args.rounds} interleaved rounds; "
          f"ratios per round against the train run of the same code")
    print(f"{'variant':28s} {'wall s':>7s} {'× train':>9s} {'CPU s':>7s} {'×':>6s} {'loop s':>7s} {'×':>6s}")
    for row in table:
        print(f"{row['variant']:28s} {row['wall_s']:7.1f} {row['wall_s_ratio']:8.3f}x {row['cpu_s']:7.1f} "
              f"{row['cpu_s_ratio']:5.3f}x {row['loop_s']:7.1f} {row['loop_s_ratio']:5.3f}x")
    pairs = [{"ours": a, "theirs": b, "wall_ratio": statistics.median(x["wall_s"] / y["wall_s"]
                                                                      for x, y in zip(rows[a], rows[b]))}
             for a, b in PAIRS if a in rows and b in rows]
    if pairs:
        print(f"\n{'pair':32s} {'wall ratio (median per round)':>30s}")
        for p in pairs:
            print(f"{p['ours'] + ' / ' + p['theirs']:32s} {p['wall_ratio']:29.3f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "machine": platform.machine(), "cpus": os.cpu_count(),
                               "rows": table, "pairs": pairs, "quick": args.quick}, indent=1))
    print(f"saved {out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
