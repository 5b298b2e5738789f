"""Study: the classification gap test bed — a teacher far bigger and far better than its student, on built-in
data — and the paper's classification claims measured there. Every run is a `cifd-clip` command; several seeds,
mean ± std, every run listed.

    python studies/gap_cls.py --out studies_out/gap-cls            # the whole study (~1 h on 2 cores)
    python studies/gap_cls.py --out /tmp/quick --quick             # a few tiny runs (the test suite)

The test bed (`cls-make-demo-data --task gap`, 72 classes): the teacher (vgg8, 3.95M parameters) trains on
16000 images; every student (cnn2, 0.23M) sees the first 4000 of them only (a nested quarter: the regime of a
pretrained teacher distilled on a smaller set). A second, smaller teacher (cnn8) gives the gain against the
gap. The teachers, their caches, the assistant and the RDM families are made once per recipe (a step reruns
when its command changes) and shared by every student run; the seed sets the student's initialisation and data
order. Results: OUT/results.json and the page (--page, default docs/studies/gap-cls.md).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies"))

import keyed_runs  # noqa: E402
from cifd_clip.demo.execute import command_line  # noqa: E402
from clip_cifd import mean_std  # noqa: E402

RECIPES = REPO / "cifd_clip" / "demo" / "recipes_classification"
SEEDS = (0, 1, 2)
HEADLINE_SEEDS = (0, 1, 2, 3, 4)
STUDENT = "cnn2"
TEACHERS = {"vgg8": "the main teacher", "cnn8": "a smaller teacher (gain against the gap)"}
RDM_FAMILIES = {"rdm1": ["0.8"], "rdm3": ["1.0", "0.8", "0.6"], "rdm5": ["1.2", "1.0", "0.8", "0.6", "0.4"],
                "rdm3spread": ["0.2", "0.25", "0.3"]}


@dataclass
class Scale:
    teacher_samples: int = 16000
    student_samples: int = 4000
    test_samples: int = 1000
    teacher_epochs: int = 6
    student_epochs: int = 10
    rdm_epochs: int = 15
    augmentations: int = 4
    extra: list = field(default_factory=list)  # student-run overrides (the quick form's smaller batches)


QUICK = Scale(teacher_samples=1600, student_samples=400, test_samples=144, teacher_epochs=3, student_epochs=1,
              rdm_epochs=1, augmentations=1, extra=["--batch-size", "32", "--workers", "0"])


@dataclass
class Config:
    name: str
    group: str
    question: str
    stage: str  # cls-train or cls-distill
    args: list = field(default_factory=list)
    teacher: str = "vgg8"
    rdm: str = ""  # an RDM family of that teacher (CIFD runs)
    online: bool = False  # the teacher runs on each batch (TAKD, DGKD) instead of the cache
    assistant: bool = False
    epochs_factor: int = 1
    seeds: tuple = SEEDS


def _cifd(name, group, question, *args, rdm="rdm3", teacher="vgg8", seeds=SEEDS):
    return Config(name, group, question, "cls-distill", ["--loss", "cifd", "--kd-dropout", "0.25", *args],
                  teacher=teacher, rdm=rdm, seeds=seeds)


def configs(quick: bool) -> list[Config]:
    main = [
        Config("no-kd", "main", "the student alone", "cls-train", seeds=HEADLINE_SEEDS),
        Config("kd", "main", "Hinton's KD from the teacher", "cls-distill", ["--loss", "kd"], seeds=HEADLINE_SEEDS),
        Config("takd", "main", "TAKD: KD from a teacher assistant (cnn4, itself distilled from the teacher)",
               "cls-distill", ["--loss", "kd"], online=True, assistant=True, seeds=HEADLINE_SEEDS),
        Config("dgkd", "main", "DGKD: KD from the teacher and the assistant, KD dropout 0.25", "cls-distill",
               ["--loss", "kd", "--kd-dropout", "0.25"], online=True, assistant=True, seeds=HEADLINE_SEEDS),
        _cifd("cifd", "main", "CIFD at the paper's CIFAR settings: 3 RDMs, IBM", seeds=HEADLINE_SEEDS),
    ]
    if quick:
        return main + [_cifd("cifd-heads", "RDM forms", "heads", "--rdm-teaching", "heads")]
    ablation = [
        _cifd("ibm-rdm1", "RDMs × IBM (the paper's Table 5)", "1 RDM, IBM", rdm="rdm1"),
        _cifd("ibm-rdm5", "RDMs × IBM (the paper's Table 5)", "5 RDMs, IBM", rdm="rdm5"),
        _cifd("ibm-only", "RDMs × IBM (the paper's Table 5)", "no RDM, IBM (the paper: the IBM alone beats KD)",
              rdm=""),
        _cifd("no-ibm-rdm1", "RDMs × IBM (the paper's Table 5)", "1 RDM, no IBM", "--no-ibm", rdm="rdm1"),
        _cifd("no-ibm-rdm3", "RDMs × IBM (the paper's Table 5)", "3 RDMs, no IBM", "--no-ibm"),
        _cifd("no-ibm-rdm5", "RDMs × IBM (the paper's Table 5)", "5 RDMs, no IBM", "--no-ibm", rdm="rdm5"),
        _cifd("ibm-binding", "does the IBM bind?", "3 RDMs, IBM with 10× the rate weight (λ_I 0.05): a bottleneck "
              "that costs the student bits", "--ibm-weight", "0.05"),
        _cifd("teacher-x4", "do the RDMs add anything?", "no RDM, the teacher's terms at the total weight of CIFD's "
              "four targets (KD ×4, features ×4), IBM", "--kd-weight", "4", "--embedding-weight", "400", rdm=""),
    ]
    forms = [
        _cifd("curriculum", "RDM forms", "3 RDMs, IBM; weights move from the lowest-rate RDM to the teacher",
              "--rdm-teaching", "curriculum"),
        _cifd("stochastic", "RDM forms", "3 RDMs, IBM; a fresh noisy code per step", "--rdm-teaching", "stochastic"),
        _cifd("heads", "RDM forms", "3 RDMs, IBM; one head per target", "--rdm-teaching", "heads"),
        _cifd("spread", "RDM forms", "3 RDMs at R = 0.2, 0.25, 0.3 (63 %, 96 %, 99.7 % held-out top-1: from "
              "between the student's level and the teacher's up to it, where the paper's rates all reach "
              "~100 %), IBM", rdm="rdm3spread"),
    ]
    gap = [
        Config("kd-cnn8", "gain against the gap", "KD from the smaller teacher (cnn8)", "cls-distill",
               ["--loss", "kd"], teacher="cnn8"),
        _cifd("cifd-cnn8", "gain against the gap", "CIFD from the smaller teacher (cnn8), its own 3 RDMs",
              teacher="cnn8"),
    ]
    group = "the paper's other baselines (issue 26)"
    baselines = [
        Config("wsld", group, "WSLD: KD weighted per sample by the CE ratio (τ 2, α 2.25)", "cls-distill",
               ["--loss", "wsld", "--temperature", "2", "--kd-weight", "2.25"]),
        Config("ipwd", group, "IPWD: KD weighted by each class's inverse propensity (τ 4)", "cls-distill",
               ["--loss", "ipwd"]),
        Config("ifd", group, "IFD: 3 projectors' mean against the teacher's features, 1 − cos, β 25, no KD",
               "cls-distill", ["--loss", "ifd"]),
        Config("mgd", group, "MGD on the last map (the paper's α 7e-5, λ 0.15), no KD", "cls-distill",
               ["--loss", "mgd"], online=True),
        Config("mgd-embedding", group, "MGD on the pooled features, α 0.2 (CIFD's feature weight 100 per element "
               "over the teacher's 512 dimensions), no KD: the IBM's control", "cls-distill",
               ["--loss", "mgd", "--mgd-level", "embedding", "--mgd-weight", "0.2"]),
        Config("crd", group, "CRD with its memory banks (16384 negatives clamped to the 3999 others), no KD",
               "cls-distill", ["--loss", "crd", "--crd-negatives", "memory", "--kd-weight", "0"], online=True),
        Config("at", group, "AT on every stage (β 1000), no KD", "cls-distill", ["--loss", "at", "--kd-weight", "0"],
               online=True),
        Config("ft", group, "FT, its paraphraser trained first (30 epochs), β 200, no KD", "cls-distill",
               ["--loss", "ft", "--kd-weight", "0"], online=True),
    ]
    budget = [Config("no-kd-x3", "budget", "the student alone at 3× the epochs (is the teacher still ahead?)",
                     "cls-train", epochs_factor=3)]
    return main + ablation + forms + gap + budget + baselines


# ---------------------------------------------------------------- the shared set-up


def _paths(out: Path) -> dict:
    return {"teacher_data": out / "data-teacher", "student_data": out / "data-student", "runs": out / "runs"}


def checkpoint(out: Path, run: str) -> str:
    return str(out / "runs" / run / "checkpoints" / "epoch_latest.pt")


def needed_setup(cfgs: list[Config]) -> dict:
    """What the chosen runs read: each teacher, its cache and RDM families, and the assistant (so --only
    trains no teacher, cache or family that none of its runs uses)."""
    distilled = [c for c in cfgs if c.stage == "cls-distill"]
    assistant = any(c.assistant for c in distilled)
    teachers = {c.teacher for c in distilled} | ({"vgg8"} if assistant else set())
    return {"teachers": [m for m in TEACHERS if m in teachers],
            "caches": {c.teacher for c in distilled if not c.online},
            "families": {(c.rdm, c.teacher) for c in distilled if c.rdm},
            "assistant": assistant}


def setup_steps(out: Path, scale: Scale, cfgs: list[Config]) -> list[tuple[str, list[str]]]:
    p = _paths(out)
    need = needed_setup(cfgs)
    student_data = f"cifar100:{p['student_data']}"
    steps = [
        ("data-teacher", ["cls-make-demo-data", "--task", "gap", "--train-samples", str(scale.teacher_samples),
                          "--test-samples", str(scale.test_samples), "--out", str(p["teacher_data"])]),
        ("data-student", ["cls-make-demo-data", "--task", "gap", "--train-samples", str(scale.student_samples),
                          "--test-samples", str(scale.test_samples), "--out", str(p["student_data"])]),
    ]
    for model in need["teachers"]:
        steps.append((f"teacher-{model}", [
            "cls-train", "--config", str(RECIPES / "teacher.yaml"), "--model", model, "--epochs",
            str(scale.teacher_epochs), "--eval-every-epochs", str(scale.teacher_epochs), "--train-data",
            f"cifar100:{p['teacher_data']}", "--logs", str(p["runs"]), "--name", f"teacher-{model}", *scale.extra]))
        if model not in need["caches"]:
            continue
        steps.append((f"embed-{model}", [
            "cls-embed", "--config", str(RECIPES / "embed.yaml"), "--augmentations", str(scale.augmentations),
            "--teacher", checkpoint(out, f"teacher-{model}"), "--train-data", student_data,
            "--out", str(out / f"cache-{model}")]))
        for family, rates in RDM_FAMILIES.items():
            if (family, model) in need["families"]:
                steps.append((f"{family}-{model}", [
                    "cls-train-rdm", "--config", str(RECIPES / "rdm.yaml"), "--rates", *rates, "--epochs",
                    str(scale.rdm_epochs), "--cache", str(out / f"cache-{model}"),
                    "--out", str(p["runs"] / f"{family}-{model}")]))
    if need["assistant"]:
        steps.append(("assistant", [
            "cls-distill", "--config", str(RECIPES / "assistant.yaml"), "--epochs", str(scale.student_epochs),
            "--eval-every-epochs", str(scale.student_epochs), "--teacher", checkpoint(out, "teacher-vgg8"),
            "--train-data", student_data, "--logs", str(p["runs"]), "--name", "assistant", *scale.extra]))
    return steps


def run_setup(out: Path, scale: Scale, cfgs: list[Config]) -> None:
    keyed_runs.run_setup(out, setup_steps(out, scale, cfgs), overwrite=lambda name: name.startswith(("embed", "rdm")))


# ---------------------------------------------------------------- one student run


def run_name(cfg: Config, seed: int) -> str:
    return f"{cfg.name}-s{seed}"


def student_argv(cfg: Config, seed: int, out: Path, scale: Scale) -> list[str]:
    epochs = scale.student_epochs * cfg.epochs_factor
    recipe = "student-nokd.yaml" if cfg.stage == "cls-train" else "student-kd.yaml"
    argv = [cfg.stage, "--config", str(RECIPES / recipe), "--model", STUDENT, *cfg.args, "--seed", str(seed),
            "--epochs", str(epochs), "--eval-every-epochs", str(epochs),
            "--train-data", f"cifar100:{out / 'data-student'}", "--logs", str(out / "runs"),
            "--name", run_name(cfg, seed), *scale.extra]
    if cfg.stage == "cls-distill":
        if cfg.online:
            argv += ["--teacher", checkpoint(out, "assistant" if cfg.name == "takd" else f"teacher-{cfg.teacher}")]
            if cfg.assistant and cfg.name != "takd":
                argv += ["--assistants", checkpoint(out, "assistant")]
        else:
            argv += ["--cache", str(out / f"cache-{cfg.teacher}")]
        if cfg.rdm:
            argv += ["--rdm", str(out / "runs" / f"{cfg.rdm}-{cfg.teacher}" / "rdm.pt")]
    return argv


def val_top1(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["eval"]["val"]["metrics"]["acc1"]


def train_and_evaluate(cfg: Config, seed: int, out: Path, scale: Scale) -> dict:
    return keyed_runs.run_student(out, run_name(cfg, seed), student_argv(cfg, seed, out, scale),
                                  {"config": cfg.name, "seed": seed}, lambda run: {"acc1": val_top1(run)})


# ---------------------------------------------------------------- the test bed's own numbers


def testbed_facts(out: Path, cfgs: list[Config]) -> dict:
    """Parameters and MACs of the teachers and the student, and the test top-1 of the teachers (and the
    assistant) the chosen runs trained."""
    import torch

    from cifd_clip.classify.cost import forward_macs
    from cifd_clip.classify.zoo import build_classifier

    need = needed_setup(cfgs)
    trained = {m: f"teacher-{m}" for m in need["teachers"]} | ({"cnn4": "assistant"} if need["assistant"] else {})
    facts = {}
    for model in [STUDENT, *trained]:
        net = build_classifier(model, 72)
        facts[model] = {"params": sum(p.numel() for p in net.parameters()),
                        "macs": forward_macs(net, torch.zeros(3, 32, 32))}
    for model, run in trained.items():
        facts[model]["acc1"] = val_top1(out / "runs" / run)
    facts["setup_seconds"] = keyed_runs.setup_seconds(out)
    return facts


def summarise(cfgs: list[Config], results: list[dict]) -> dict:
    rows = {}
    for cfg in cfgs:
        runs = [r for r in results if r["config"] == cfg.name]
        rows[cfg.name] = {"group": cfg.group, "question": cfg.question, "teacher": cfg.teacher,
                          "acc1": [r["acc1"] for r in runs if r.get("exit_code") == 0],
                          "failed": [r["seed"] for r in runs if r.get("exit_code") != 0]}
    return rows


def write_page(page: Path, summary: dict, results: list[dict], facts: dict, out: Path, scale: Scale,
               cfgs: list[Config], quick: bool, only: list[str] | None = None) -> None:
    def rel(command: str) -> str:
        return command.replace(str(out), "OUT").replace(str(REPO) + "/", "")

    minutes = (sum(facts.get("setup_seconds", {}).values()) + sum(r["train_seconds"] for r in results)) / 60
    lines = ["# Study: the classification gap test bed", "",
             "Written by `python studies/gap_cls.py" + (" --quick" if quick else "") +
             (" --only " + " ".join(only) if only else "") + f"`: {minutes:.0f} minutes of "
             "set-up and training summed over every step on a 2-core machine. Every number is a run of a command "
             "listed at the end; none was left out. Test top-1 on the test bed's 72-class test set (1000 images, "
             "chance 1.4%); mean ± std over seeds (student initialisation and data order).", "",
             "## The test bed", "",
             f"`cls-make-demo-data --task gap`: the colour, kind and fill of a large shape over a distractor. The "
             f"teachers train on {scale.teacher_samples} images for {scale.teacher_epochs} epochs; every student on "
             f"the first {scale.student_samples} of them (nested) for {scale.student_epochs} epochs.", "",
             "| model | role | parameters | MACs / image | test top-1 (%) |", "|---|---|---:|---:|---:|"]
    roles = {STUDENT: "student", "cnn4": "teacher assistant (TAKD, DGKD)", **TEACHERS}
    for model, f in facts.items():
        if model in roles:
            acc = f"{100 * f['acc1']:.1f}" if "acc1" in f else "see no-kd"
            lines.append(f"| {model} | {roles[model]} | {f['params'] / 1e6:.3f}M | {f['macs'] / 1e6:.1f}M | {acc} |")
    lines += [""]
    for group in dict.fromkeys(r["group"] for r in summary.values()):
        lines += [f"## {group}", "", "| run | what | teacher | seeds | test top-1 (%) |", "|---|---|---|---:|---:|"]
        for name, row in summary.items():
            if row["group"] == group:
                failed = f" ({len(row['failed'])} failed)" if row["failed"] else ""
                teacher = row["teacher"] if name not in ("no-kd", "no-kd-x3") else "—"
                lines.append(f"| {name}{failed} | {row['question']} | {teacher} | {len(row['acc1'])} | "
                             f"{mean_std(row['acc1'])} |")
        lines.append("")
    lines += ["## Every run", "", "| run | seed | test top-1 | train s | command |", "|---|---:|---:|---:|---|"]
    for r in sorted(results, key=lambda r: (r["config"], r["seed"])):
        acc = f"{100 * r['acc1']:.1f}" if "acc1" in r else "failed"
        lines.append(f"| {r['config']} | {r['seed']} | {acc} | {r['train_seconds']:.0f} | `{rel(r['command'])}` |")
    lines += ["", "Set-up commands (run once, shared by every student; seconds on 2 cores):", ""]
    for name, argv in setup_steps(out, scale, cfgs):
        seconds = facts.get("setup_seconds", {}).get(name)
        lines.append(f"- {name} ({seconds:.0f} s): `{rel(command_line(argv))}`" if seconds is not None
                     else f"- {name}: `{rel(command_line(argv))}`")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = keyed_runs.study_parser(__doc__, "gap-cls.md").parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scale = QUICK if args.quick else Scale()
    cfgs = [c for c in configs(args.quick) if args.only is None or c.name in args.only]
    jobs = [(cfg, seed, out, scale) for cfg in cfgs for seed in (cfg.seeds[:1] if args.quick else cfg.seeds)]
    results = keyed_runs.set_up_then_run(
        lambda: run_setup(out, scale, cfgs), jobs, train_and_evaluate,
        lambda r: f"top-1 {100 * r['acc1']:.1f}%" if "acc1" in r else "FAILED", args.jobs)
    summary = summarise(cfgs, results)
    facts = testbed_facts(out, cfgs)
    (out / "results.json").write_text(json.dumps({"testbed": facts, "summary": summary, "runs": results}, indent=1))
    page = Path(args.page) if args.page else (out / "gap-cls.md" if args.quick else
                                              REPO / "docs" / "studies" / "gap-cls.md")
    write_page(page, summary, results, facts, out, scale, cfgs, args.quick, args.only)
    print(f"wrote {page} and {out / 'results.json'}")
    return 0 if all(r.get("exit_code") == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
