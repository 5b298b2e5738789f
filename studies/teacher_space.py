"""Study: students exported into the teacher's embedding space, searched against the teacher's own index.

    python studies/teacher_space.py --out studies_out/teacher-space          # 4 students x 3 seeds (~35 min, 2 cores)
    python studies/teacher_space.py --out /tmp/quick --quick                 # two tiny students, one seed (tests)

The students are studies/clip_cifd.py's (same set-up: demo data, teacher, cache, RDMs; same commands): no KD,
open_clip's KD, CLIP-KD (FD + ICL + CRD) and CIFD at its defaults, seeds 0, 1 and 2; a run clip_cifd.py already
made in the same --out is reused. Each student is exported into the teacher's space with every map it has:
CIFD's own (its isometric IBM decoder Q, `--teacher-map learned`) and, for every student, an orthogonal
(`procrustes`) and a least-squares (`lstsq`) map fitted after training on 4,096 cached training pairs. Each
export's captions and images are then searched against the teacher's embeddings of the demo's held-out sets,
and its images classified with the teacher's zero-shot classifier (`cifd-clip bench --suite demo-teacher-space
--gallery-model TEACHER`; the teacher embeds each set once). Results: OUT/teacher_space.json and the page
(--page, default docs/studies/teacher-space.md), which lists every command and every run's numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies"))

import clip_cifd  # noqa: E402
from cifd_clip.demo.execute import command_line, run_step, tail  # noqa: E402

mean_std = clip_cifd.mean_std

SUITE = REPO / "cifd_clip" / "evaluation" / "suites" / "demo-teacher-space.yaml"
STUDENTS = ("no-kd", "kd", "clipkd", "cifd")
QUICK_STUDENTS = ("no-kd", "cifd")
FIT_SAMPLES = 4096
MAPS = {"cifd": ("learned", "procrustes", "lstsq")}  # every other student: the fitted maps only
FITTED = ("procrustes", "lstsq")
MAP_LABELS = {"learned": "its IBM map Q", "procrustes": "Procrustes (fitted)", "lstsq": "least squares (fitted)"}
RETRIEVAL = "demo retrieval"
CLASSIFICATION = "demo zero-shot"


def export_argv(out: Path, run: str, how: str, quick: bool) -> list[str]:
    argv = ["export", "--checkpoint", str(out / "runs" / run / "checkpoints" / "epoch_latest.pt"),
            "--out", str(out / "teacher-space" / f"{run}-{how}"), "--space", "teacher", "--teacher-map", how,
            "--overwrite"]
    if how in FITTED:
        train = out / "data" / "train" / ("{00000..00003}.tar" if quick else "{00000..00011}.tar")
        argv += ["--teacher-cache", str(out / "cache"), "--fit-data", str(train), "--fit-samples",
                 str(500 if quick else FIT_SAMPLES)]
    return argv


def bench_argv(out: Path, run: str, maps: tuple) -> list[str]:
    return ["bench", "--suite", str(SUITE), "--dataset-root-base", str(out / "data"), "--output-dir",
            str(out / "teacher-space" / f"{run}-bench"), "--gallery-model",
            str(out / "runs" / "teacher" / "checkpoints" / "epoch_latest.pt"), "--gallery-dir", str(out / "gallery"),
            "--workers", "0", "--batch-size", "128", "--device", "cpu",
            "--model", *(f"local-dir:{out / 'teacher-space' / f'{run}-{how}'}" for how in maps)]


def run_or_fail(argv: list[str], log: Path) -> None:
    code, _ = run_step(argv, log, stream=False)
    if code != 0:
        raise RuntimeError(f"{command_line(argv)} failed (exit {code}):\n{tail(log, 5)}")


def evaluate_student(out: Path, cfg, seed: int, quick: bool) -> list[dict]:
    """One row per map: the cross-model metrics of the student's export, with the commands that made them."""
    config, run = cfg.name, clip_cifd.run_name(cfg, seed)
    result_file = out / "teacher-space" / f"{run}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    maps = MAPS.get(config, FITTED)
    commands = []
    for how in maps:
        argv = export_argv(out, run, how, quick)
        commands.append(command_line(argv))
        run_or_fail(argv, out / "logs" / f"{run}-export-{how}.log")
    argv = bench_argv(out, run, maps)
    commands.append(command_line(argv))
    run_or_fail(argv, out / "logs" / f"{run}-bench-teacher-space.log")
    bench = json.loads((out / "teacher-space" / f"{run}-bench" / "results.json").read_text())
    rows = []
    for how, per_dataset in zip(maps, bench["results"]):
        metrics = {r["label"]: r["metrics"] for r in per_dataset if r["status"] == "ok"}
        retrieval, zeroshot = metrics[RETRIEVAL], metrics[CLASSIFICATION]
        rows.append({"config": config, "seed": seed, "map": how, "commands": commands,
                     "t2i_r1": retrieval["image_retrieval_recall@1"], "i2t_r1": retrieval["text_retrieval_recall@1"],
                     "recall_retained": retrieval["recall_retained"], "acc1": zeroshot["acc1"],
                     "acc1_retained": zeroshot["acc1_retained"],
                     "teacher_t2i_r1": retrieval["teacher_image_retrieval_recall@1"],
                     "teacher_i2t_r1": retrieval["teacher_text_retrieval_recall@1"],
                     "teacher_acc1": zeroshot["teacher_acc1"], "own_acc1": zeroshot["student_acc1"],
                     "own_mean_recall": statistics.mean(v for k, v in retrieval.items()
                                                        if k.startswith("student_") and "recall@" in k)})
    result_file.write_text(json.dumps(rows, indent=1))
    return rows


def _relative(command: str, out: Path) -> str:
    """OUT for the working folder, and the suite as a checkout shows it, wherever the runs were made."""
    return re.sub(r"\S*/cifd_clip/evaluation/suites/", "eval/suites/", clip_cifd._relative(command, out))


def write_page(page: Path, rows: list[dict], out: Path, quick: bool, cfgs: dict) -> None:
    teacher = rows[0]
    lines = ["# Study: students in the teacher's embedding space", "",
             "Written by `python studies/teacher_space.py" + (" --quick" if quick else "") + "`. A team with an "
             "index the teacher built embeds only its queries with the student: the student's captions are searched "
             "against the teacher's image embeddings (text→image R@1), its images against the teacher's caption "
             "embeddings (image→text R@1), and its images classified with the teacher's zero-shot classifier "
             "(top-1), on the demo's held-out retrieval (300 images) and zero-shot (720 images, 36 classes) sets. "
             "*Kept* is the cross-model figure over the teacher's own (mean of R@1/5/10 both ways for recall). "
             "*Export ↔ export* is the exported student against its own embeddings (what a fresh index built with it "
             "would give; for the angle-preserving maps, Q and Procrustes, the same as in the student's own space). "
             "Mean ± std over seeds; students, teacher, cache and RDMs are studies/clip_cifd.py's.", "",
             f"The teacher against its own index: text→image R@1 {100 * teacher['teacher_t2i_r1']:.1f}%, "
             f"image→text R@1 {100 * teacher['teacher_i2t_r1']:.1f}%, zero-shot top-1 "
             f"{100 * teacher['teacher_acc1']:.1f}%.", "",
             "| student | map into the teacher's space | seeds | text→image R@1 (%) | image→text R@1 (%) | "
             "recall kept (%) | top-1 (%) | top-1 kept (%) | export ↔ export: top-1 (%) | export ↔ export: mean recall (%) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["config"], r["map"]), []).append(r)
    for (config, how), group in groups.items():
        get = lambda key: [r[key] for r in group]  # noqa: E731
        lines.append(f"| {config} | {MAP_LABELS[how]} | {len(group)} | {mean_std(get('t2i_r1'))} | "
                     f"{mean_std(get('i2t_r1'))} | {mean_std(get('recall_retained'))} | {mean_std(get('acc1'))} | "
                     f"{mean_std(get('acc1_retained'))} | {mean_std(get('own_acc1'))} | "
                     f"{mean_std(get('own_mean_recall'))} |")
    lines += ["", "## Every run", "", "| student | seed | map | t→i R@1 | i→t R@1 | recall kept | top-1 | top-1 kept |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["config"], r["map"], r["seed"])):
        lines.append(f"| {r['config']} | {r['seed']} | {r['map']} | {100 * r['t2i_r1']:.1f} | {100 * r['i2t_r1']:.1f} "
                     f"| {100 * r['recall_retained']:.1f} | {100 * r['acc1']:.1f} | {100 * r['acc1_retained']:.1f} |")
    lines += ["", "## Commands", "", "Students (studies/clip_cifd.py's set-up and runs):", ""]
    lines += [f"- `{_relative(command_line(argv), out)}`" for _, argv in clip_cifd.setup_steps(out, quick)]
    seen = set()
    for r in rows:
        if (r["config"], r["seed"]) in seen:
            continue
        seen.add((r["config"], r["seed"]))
        argv = clip_cifd.student_argv(cfgs[r["config"]], r["seed"], out, quick)
        lines.append(f"- `{_relative(command_line(argv), out)}`")
        lines += [f"  - `{_relative(c, out)}`" for c in r["commands"]]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="working folder (shared with studies/clip_cifd.py's runs)")
    parser.add_argument("--quick", action="store_true", help="two tiny students, one seed (the test suite)")
    parser.add_argument("--page", default=None, help="markdown page (default docs/studies/teacher-space.md; "
                                                     "with --quick OUT/teacher-space.md)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    clip_cifd.run_setup(out, args.quick)
    cfgs = {c.name: c for c in clip_cifd.configs(False)}
    if args.quick:
        cfgs.update({c.name: c for c in clip_cifd.configs(True)})
    rows = []
    for seed in (0,) if args.quick else clip_cifd.SEEDS:
        for config in QUICK_STUDENTS if args.quick else STUDENTS:
            trained = clip_cifd.train_and_evaluate(cfgs[config], seed, out, args.quick)
            if trained.get("exit_code") != 0:
                raise SystemExit(f"student {config} seed {seed} failed: {trained.get('error')}")
            rows += evaluate_student(out, cfgs[config], seed, args.quick)
            print(f"{config} seed {seed}: " + ", ".join(
                f"{r['map']} recall kept {100 * r['recall_retained']:.1f}%" for r in rows[-len(MAPS.get(config, FITTED)):]),
                flush=True)
    (out / "teacher_space.json").write_text(json.dumps(rows, indent=1))
    page = Path(args.page) if args.page else (out / "teacher-space.md" if args.quick else
                                              REPO / "docs" / "studies" / "teacher-space.md")
    write_page(page, rows, out, args.quick, cfgs)
    print(f"wrote {page} and {out / 'teacher_space.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
