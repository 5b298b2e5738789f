"""Study: the CLIP gap test bed — a teacher far bigger than its student and trained on four times its data — and
the paper's CLIP claims measured there. Every run is a `cifd-clip` command; several seeds, mean ± std, every run
listed.

    python studies/gap_clip.py --out studies_out/gap-clip          # the whole study (~1 h on 2 cores)
    python studies/gap_clip.py --out /tmp/quick --quick            # a few tiny runs (the test suite)

The teacher (tiny-rn-teacher: 3.22M parameters without the token embeddings, 46M MACs per image-text pair)
trains on 16000 demo samples; every student (tiny-vit-student-s, a ViT: 0.14M, 4.1M MACs) sees the first 4000
(a nested quarter, the regime of a pretrained teacher distilled on a smaller set). Teacher, cache and RDMs are
made once per recipe and shared; the seed sets the student's initialisation and data order. The runs, their
evaluation (zero-shot top-1 and retrieval recall in the student's space W, and in Û for CIFD) and the page's
tables are studies/clip_cifd.py's. Results: OUT/results.json and the page (default docs/studies/gap-clip.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies"))

import clip_cifd  # noqa: E402
import keyed_runs  # noqa: E402
from clip_cifd import Config, _cifd, mean_std  # noqa: E402
from cifd_clip.demo.execute import command_line  # noqa: E402

RECIPES = clip_cifd.RECIPES
TEACHER, STUDENT = "tiny-rn-teacher", "tiny-vit-student-s"
TEACHER_SAMPLES, TEACHER_EPOCHS, STUDENT_SAMPLES = 16000, 4, 4000
SAMPLES_PER_SHARD = 500  # recipes/demo/data.yaml
SEEDS, HEADLINE_SEEDS = (0, 1, 2), (0, 1, 2, 3, 4)


def configs(quick: bool) -> list[Config]:
    main = [
        Config("no-kd", "main", "the student alone", "student-nokd.yaml", seeds=HEADLINE_SEEDS),
        Config("kd", "main", "open_clip's DistillClipLoss (--distill-model)", "student-kd.yaml", seeds=HEADLINE_SEEDS),
        _cifd("cifd", "main", "CIFD at its defaults (3 RDMs, isometric IBM)", seeds=HEADLINE_SEEDS),
    ]
    if quick:
        return main + [_cifd("heads", "RDM forms", "one isometric head per target", "--rdm-teaching", "heads")]
    refs = [
        Config("clipkd-fd", "references", "CLIP-KD: FD alone", "student-kd.yaml",
               ["--loss", "clipkd", "--icl-weight", "0", "--crd-weight", "0"]),
        Config("clipkd", "references", "CLIP-KD: FD + ICL + CRD", "student-kd.yaml", ["--loss", "clipkd"]),
        Config("tinyclip", "references", "TinyCLIP's affinity mimicking", "student-kd.yaml", ["--loss", "tinyclip"]),
    ]
    parts = [
        _cifd("cifd-paper", "CIFD's parts", "the paper's literal setting: one decoder per tower, noise on the raw "
              "embedding, λ_CL 0.005", "--ibm-decoder", "separate", "--ibm-input", "raw", "--contrastive-weight",
              "0.005"),
        _cifd("free-maps-no-ibm", "CIFD's parts", "FD through free per-tower maps, no IBM (the paper's decoders "
              "without the IBM's noise)", "--ibm-decoder", "separate", "--no-ibm"),
        _cifd("no-ibm", "CIFD's parts", "the defaults without the IBM (isometric map alone)", "--no-ibm"),
        _cifd("ibm-binding", "CIFD's parts", "the IBM with 10× the rate weight (λ_I 0.01): a bottleneck that costs "
              "the student bits", "--ibm-weight", "0.01"),
        _cifd("teacher-x4", "CIFD's parts", "no RDM: the teacher term alone at the total weight of CIFD's four "
              "targets", "--teacher-weight", "4", rdm=""),
    ]
    forms = [
        _cifd("curriculum", "RDM forms", "weights move from the lowest-rate RDM to the teacher",
              "--rdm-teaching", "curriculum"),
        _cifd("stochastic", "RDM forms", "a fresh noisy code per step", "--rdm-teaching", "stochastic"),
        _cifd("heads", "RDM forms", "one isometric head per target", "--rdm-teaching", "heads"),
    ]
    budget = [Config("no-kd-x3", "budget", "the student alone at 3× the epochs", "student-nokd.yaml", epochs=9)]
    return main + refs + parts + forms + budget


def _data(out: Path) -> Path:
    return out / "data"


def setup_steps(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    data, runs = _data(out), out / "runs"
    if quick:
        sizes, teacher_shards, student_shards = ["--train-samples", "1000", "--val-samples", "10",
                                                 "--zeroshot-samples", "108", "--retrieval-samples", "40",
                                                 "--samples-per-shard", "250"], "{00000..00003}", "{00000..00003}"
        teacher_extra, rdm_extra = ["--epochs", "1"], ["--epochs", "2", "--hidden-dim", "64", "--bottleneck-dim", "16"]
    else:
        sizes = ["--train-samples", str(TEACHER_SAMPLES)]
        teacher_shards, student_shards = _shards(TEACHER_SAMPLES), _shards(STUDENT_SAMPLES)
        teacher_extra, rdm_extra = ["--epochs", str(TEACHER_EPOCHS)], []
    return [
        ("data", ["make-demo-data", "--config", str(RECIPES / "data.yaml"), *sizes, "--out", str(data)]),
        ("teacher", ["train", "--config", str(RECIPES / "teacher.yaml"), "--model", TEACHER, *teacher_extra,
                     "--train-data", str(data / "train" / f"{teacher_shards}.tar"), "--logs", str(runs),
                     "--name", "teacher", "--eval-dataset-root", str(data)]),
        ("embed", ["embed", "--config", str(RECIPES / "embed.yaml"), "--teacher",
                   str(runs / "teacher" / "checkpoints" / "epoch_latest.pt"),
                   "--train-data", str(data / "train" / f"{student_shards}.tar"), "--out", str(out / "cache"),
                   "--zeroshot-root", str(data / "zeroshot")]),
        ("rdm3", ["train-rdm", "--config", str(RECIPES / "rdm.yaml"), *rdm_extra, "--rates", "100", "300", "1000",
                  "--cache", str(out / "cache"), "--out", str(runs / "rdm3")]),
    ]


def _shards(samples: int) -> str:
    """The first `samples` of the demo's training set: whole shards of 500, in order (the students' set nests in
    the teacher's, as every sample is a function of its index)."""
    return f"{{00000..{samples // SAMPLES_PER_SHARD - 1:05d}}}"


def run_setup(out: Path, quick: bool) -> None:
    keyed_runs.run_setup(out, setup_steps(out, quick), overwrite=lambda name: name in ("embed", "rdm3"))


def student_argv(cfg: Config, seed: int, out: Path, quick: bool) -> list[str]:
    argv = [*clip_cifd.shared_student_argv(cfg, seed, out, quick), "--model", STUDENT]
    if not quick:
        argv[argv.index("--train-data") + 1] = str(_data(out) / "train" / f"{_shards(STUDENT_SAMPLES)}.tar")
    return argv


def train_and_evaluate(cfg: Config, seed: int, out: Path, quick: bool) -> dict:
    return keyed_runs.run_student(out, clip_cifd.run_name(cfg, seed), student_argv(cfg, seed, out, quick),
                                  {"config": cfg.name, "seed": seed},
                                  lambda run: clip_cifd.evaluate_run(run, _data(out), cfg.is_cifd))


def model_facts() -> dict:
    """Parameters (all, and without the token embeddings) and MACs of one image + one caption, per model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cifd_clip.clip_models import load_model

    facts = {}
    for name in (TEACHER, STUDENT):
        model = load_model(name).model
        size = model.visual.image_size
        size = size if isinstance(size, int) else size[0]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.encode_image(torch.zeros(1, 3, size, size))
            model.encode_text(torch.zeros(1, model.context_length, dtype=torch.long))
        total = sum(p.numel() for p in model.parameters())
        facts[name] = {"params": total, "params_without_token_embedding": total - model.token_embedding.weight.numel(),
                       "macs": counter.get_total_flops() // 2}
    return facts


def write_page(page: Path, summary: dict, results: list[dict], out: Path, quick: bool) -> None:
    facts = model_facts()
    setup_seconds = keyed_runs.setup_seconds(out)
    minutes = (sum(setup_seconds.values()) + sum(r["train_seconds"] for r in results)) / 60
    top1 = clip_cifd.teacher_top1(out)
    t, s = facts[TEACHER], facts[STUDENT]
    lines = ["# Study: the CLIP gap test bed", "",
             "Written by `python studies/gap_clip.py" + (" --quick" if quick else "") + f"`: {minutes:.0f} minutes of "
             "set-up and training summed over every step on a 2-core machine (two student runs at a time). Every "
             "number is a run of a command listed at the end; none was left out. Zero-shot top-1 on the demo's "
             "36-class set (chance 2.8%) and mean retrieval recall (R@1/5/10 both ways), in the student's own space "
             "**W** (what export keeps) and for CIFD runs in the IBM decoder's output **Û**; mean ± std over seeds.",
             "", "## The test bed", "",
             "| model | role | parameters (without token embeddings) | MACs (one image + one caption) | "
             "zero-shot top-1 (%) |", "|---|---|---:|---:|---:|",
             f"| {TEACHER} | teacher, {TEACHER_SAMPLES if not quick else 1000} samples × "
             f"{TEACHER_EPOCHS if not quick else 1} epochs | {t['params_without_token_embedding'] / 1e6:.2f}M | "
             f"{t['macs'] / 1e6:.1f}M | {100 * top1:.1f} |" if top1 is not None else "",
             f"| {STUDENT} | student, the first {STUDENT_SAMPLES if not quick else 1000} samples × 3 epochs | {s['params_without_token_embedding'] / 1e6:.2f}M "
             f"| {s['macs'] / 1e6:.1f}M | see no-kd |", "",
             f"The teacher has {t['params_without_token_embedding'] / s['params_without_token_embedding']:.1f}× the "
             f"student's parameters (token embeddings aside) and {t['macs'] / s['macs']:.1f}× its MACs.", ""]
    for group in dict.fromkeys(row["group"] for row in summary.values()):
        lines += [f"## {group}", "", "| run | what | epochs | seeds | top-1 W (%) | recall W (%) | top-1 Û (%) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, row in summary.items():
            if row["group"] == group:
                failed = f" ({len(row['failed'])} failed)" if row["failed"] else ""
                lines.append(f"| {name}{failed} | {row['question']} | {row['epochs']} | {len(row.get('W_acc1', []))} | "
                             f"{mean_std(row.get('W_acc1', []))} | {mean_std(row.get('W_mean_recall', []))} | "
                             f"{mean_std(row.get('U_acc1', []))} |")
        lines.append("")
    lines += clip_cifd.every_run_lines(results, out)
    lines += ["", "Set-up commands (run once, shared by every student; seconds on 2 cores):", ""]
    for name, argv in setup_steps(out, quick):
        seconds = f" ({setup_seconds[name]:.0f} s)" if name in setup_seconds else ""
        lines.append(f"- {name}{seconds}: `{clip_cifd._relative(command_line(argv), out)}`")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(line for line in lines if line is not None) + "\n")


def main(argv=None) -> int:
    args = keyed_runs.study_parser(__doc__, "gap-clip.md").parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfgs = [c for c in configs(args.quick) if args.only is None or c.name in args.only]
    jobs = [(cfg, seed, out, args.quick) for cfg in cfgs for seed in (cfg.seeds[:1] if args.quick else cfg.seeds)]

    def describe(result: dict) -> str:
        w = result.get("W", {})
        return f"top-1 {100 * w['acc1']:.1f}%, recall {100 * w['mean_recall']:.1f}%" if w else "FAILED"

    results = keyed_runs.set_up_then_run(lambda: run_setup(out, args.quick), jobs, train_and_evaluate, describe,
                                         args.jobs)
    summary = clip_cifd.summarise(cfgs, results)
    (out / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    page = Path(args.page) if args.page else (out / "gap-clip.md" if args.quick else
                                              REPO / "docs" / "studies" / "gap-clip.md")
    write_page(page, summary, results, out, args.quick)
    print(f"wrote {page} and {out / 'results.json'}")
    return 0 if all(r.get("exit_code") == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
