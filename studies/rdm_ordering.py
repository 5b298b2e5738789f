"""Study: does each demo's RDM step give a family ordered by R (higher R: more bits, lower distortion) on any
cache? With and without rate continuation, on caches of teachers trained with several seeds.

    cifd-clip demo --out demo_out && cifd-clip cls-demo --out cls_demo_out
    python studies/rdm_ordering.py --demo demo_out --demo cls_demo_out [--gap-cls studies_out/gap-cls]

For each finished demo it retrains the teacher with each --teacher-seeds (the demo's own teacher command with
`--seed S`) and embeds it (the demo's embed command), beside the demo's own seed-0 teacher and cache; with
--gap-cls also the classification gap test bed's caches (studies/gap_cls.py's vgg8 and cnn8). On every cache
it runs the demo's own RDM command with each --rdm-seeds, once at the defaults (rate continuation) and once with
`--no-rate-continuation` (every RDM trained side by side from its own initialisation, the previous default),
and reads the ordering check of the RDM report (held-out rate and MSE of neighbouring R). Results: OUT (default
DEMO/rdm-ordering for the first demo) and the page (--page, default docs/studies/rdm-ordering.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies"))

import keyed_runs  # noqa: E402
from cifd_clip.demo.execute import command_line  # noqa: E402
from demo_seeds import is_classification  # noqa: E402

MODES = {"continuation": [], "side by side": ["--no-rate-continuation"]}


def demo_commands(demo: Path) -> dict:
    """The demo's teacher, embed and RDM commands (argv without `cifd-clip`), as its report lists them."""
    import shlex

    report = (demo / "report" / "report.md").read_text()
    out = {}
    for line in report.split("## Commands run")[1].split("```")[1].strip().splitlines():
        argv = shlex.split(line)[1:]
        if argv[0] in ("train", "cls-train") and argv[argv.index("--name") + 1] == "teacher":
            out["teacher"] = argv
        elif argv[0] in ("embed", "cls-embed"):
            out["embed"] = argv
        elif argv[0] in ("train-rdm", "cls-train-rdm"):
            out["rdm"] = argv
    return out


def replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def caches(demo: Path, teacher_seeds: list[int], out: Path) -> list[tuple[str, Path, list]]:
    """(label, cache folder, set-up steps that make it) for the demo's seed-0 cache and each teacher seed."""
    commands = demo_commands(demo)
    label = "cls-demo" if is_classification(demo) else "demo"
    found = [(f"{label}, teacher seed 0", demo / "cache", [])]
    for seed in teacher_seeds:
        name = f"{label}-teacher-s{seed}"
        teacher = [*replace(replace(commands["teacher"], "--name", name), "--logs", str(out / "runs")),
                   "--seed", str(seed)]
        checkpoint = out / "runs" / name / "checkpoints" / "epoch_latest.pt"
        cache = out / "caches" / f"{label}-s{seed}"
        embed = replace(replace(commands["embed"], "--teacher", str(checkpoint)), "--out", str(cache))
        found.append((f"{label}, teacher seed {seed}", cache, [(name, teacher), (f"{label}-embed-s{seed}", embed)]))
    return found


def family_rows(report: dict) -> dict:
    """{modality: [(R, bits, MSE)]} of an RDM report."""
    rows: dict = {}
    for r in report["rdms"]:
        rows.setdefault(r["modality"], []).append((r["rate_weight"], r["rate_bits"], r["mse"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="append", required=True, help="a finished demo or cls-demo (repeatable)")
    parser.add_argument("--gap-cls", default=None, help="studies/gap_cls.py's output folder (its caches)")
    parser.add_argument("--teacher-seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rdm-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None)
    parser.add_argument("--page", default=str(REPO / "docs" / "studies" / "rdm-ordering.md"))
    args = parser.parse_args(argv)
    demos = [Path(d) for d in args.demo]
    out = Path(args.out) if args.out else demos[0] / "rdm-ordering"
    setup, targets = [], []  # targets: (label, cache, the demo's RDM command)
    for demo in demos:
        rdm = demo_commands(demo)["rdm"]
        for label, cache, steps in caches(demo, args.teacher_seeds, out):
            setup += steps
            targets.append((label, cache, rdm))
        if args.gap_cls and is_classification(demo):
            for teacher in ("vgg8", "cnn8"):
                targets.append((f"gap-cls, {teacher} teacher", Path(args.gap_cls) / f"cache-{teacher}", rdm))
    keyed_runs.run_setup(out, setup, overwrite=lambda name: "embed" in name)
    results = []
    for label, cache, rdm in targets:
        for mode, extra in MODES.items():
            for seed in args.rdm_seeds:
                name = f"{label}-{mode}-s{seed}".replace(", ", "-").replace(" ", "-")
                rdm_out = out / "rdm" / name
                command = [*replace(replace(rdm, "--cache", str(cache)), "--out", str(rdm_out)), "--seed", str(seed),
                           *extra, "--overwrite"]
                result = keyed_runs.run_student(out, name, command, {"cache": label, "mode": mode, "seed": seed},
                                                lambda _run, rdm_out=rdm_out: json.loads(
                                                    (rdm_out / "rdm_eval.json").read_text()))
                results.append(result)
                print(f"{name}: {len(result.get('warnings', ['failed']))} warnings", flush=True)
    write_page(Path(args.page), results, out, args)
    print(f"wrote {args.page}")
    return 0


def write_page(page: Path, results: list[dict], out: Path, args) -> None:
    lines = ["# Study: RDM families ordered by R on any cache", "",
             "Written by `python studies/rdm_ordering.py " + " ".join(f"--demo {Path(d).name}" for d in args.demo) +
             (" --gap-cls GAP_CLS" if args.gap_cls else "") + f" --teacher-seeds {' '.join(map(str, args.teacher_seeds))} "
             f"--rdm-seeds {' '.join(map(str, args.rdm_seeds))}`. Each demo's own RDM command (its report lists it) on "
             "caches of teachers trained with several seeds; a family is *ordered* when, for every modality and every "
             "pair of neighbouring R, the higher R has more held-out bits and a lower held-out MSE (the RDM report's "
             "check, which warns otherwise). *continuation*: the default, the RDMs trained one rate at a time from "
             "the highest R down, each starting from the next higher R's trained weights; *side by side*: "
             "`--no-rate-continuation`, every RDM from its own initialisation (the default until this round).", "",
             "| cache | mode | ordered families | runs |", "|---|---|---:|---:|"]
    keyed = {}
    for r in results:
        keyed.setdefault((r["cache"], r["mode"]), []).append(r)
    for (cache, mode), rows in keyed.items():
        ordered = sum(1 for r in rows if r.get("exit_code") == 0 and not r.get("warnings"))
        lines.append(f"| {cache} | {mode} | {ordered} | {len(rows)} |")
    lines += ["", "## Every family", "", "Held-out rate (bits per sample, rounded) / MSE per element, by modality "
              "and R, lowest R first.", "", "| cache | mode | RDM seed | family | warnings |", "|---|---|---:|---|---|"]
    for r in results:
        if r.get("exit_code") != 0:
            lines.append(f"| {r['cache']} | {r['mode']} | {r['seed']} | failed: {r.get('error', '')} | |")
            continue
        family = "; ".join(f"{m}: " + ", ".join(f"R={w:g} {b:.1f} b / {mse:.2e}" for w, b, mse in rows)
                           for m, rows in family_rows(r).items())
        lines.append(f"| {r['cache']} | {r['mode']} | {r['seed']} | {family} | {len(r['warnings'])} |")
    lines += ["", "## Commands", ""]
    for r in results:
        lines.append(f"- `{r['command'].replace(str(out), 'OUT')}`")
    page.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
