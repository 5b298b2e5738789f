"""The classification demo's report: every student side by side (accuracy, training cost), the RDMs'
accuracy-against-rate curve, validation curves, wall time per step, and a verdict computed from the numbers."""
from __future__ import annotations

import json
import shutil

from .cls_steps import STUDENTS, ClsLayout
from .report import PARTS_ADD, TIE, stage_table


def collect(layout: ClsLayout) -> dict:
    table = {}
    for run, label in [("teacher", "teacher"), ("assistant", "assistant (cnn4)")] + STUDENTS:
        summary = json.loads((layout.runs / run / "summary.json").read_text())
        metrics = summary["eval"]["val"]["metrics"]
        cost = summary.get("macs_per_sample", {})
        table[label] = {"run": run, "acc1": metrics["acc1"], "acc5": metrics["acc5"],
                        "mean_per_class_recall": metrics["mean_per_class_recall"],
                        "train_seconds": summary["wall_time_s"], "macs": cost.get("total", 0),
                        "macs_total": summary.get("macs_total", 0)}
    embed = json.loads((layout.cache / "embed_cost.json").read_text())
    table[STUDENTS[-1][1]]["embed_macs_total"] = embed["macs_total"]  # the RDMs' teacher pass, done once
    return table


def markdown_table(table: dict) -> str:
    lines = ["| model | top-1 (%) | top-5 (%) | mean per-class recall (%) | training MMACs / sample | "
             "training time (s) |", "|---|---:|---:|---:|---:|---:|"]
    for label, row in table.items():
        lines.append(f"| {label} | {100 * row['acc1']:.1f} | {100 * (row['acc5'] or 0):.1f} | "
                     f"{100 * row['mean_per_class_recall']:.1f} | {row['macs'] / 1e6:.1f} | {row['train_seconds']:.0f} |")
    return "\n".join(lines)


def relative_costs(table: dict) -> dict:
    """Whole-pipeline training MACs relative to KD: an assistant's training counts for TAKD and DGKD, the teacher's
    one pass over the cached views for CIFD (whose student then trains on them without a teacher forward pass;
    the RDMs' own training on cached features is under 1%)."""
    assistant, kd = table["assistant (cnn4)"]["macs_total"], table["KD"]["macs_total"]
    cifd = table[STUDENTS[-1][1]]
    return {"TAKD": (assistant + table["TAKD"]["macs_total"]) / kd, "DGKD": (assistant + table["DGKD"]["macs_total"]) / kd,
            "CIFD": (cifd["macs_total"] + cifd["embed_macs_total"]) / kd}


def verdict(table: dict) -> list[str]:
    cifd = table[STUDENTS[-1][1]]
    lines = []
    for _, label in STUDENTS[:-1]:
        diff = 100 * (cifd["acc1"] - table[label]["acc1"])
        word = "ties" if abs(diff) < TIE else ("beats" if diff > 0 else "does NOT beat")
        lines.append(f"CIFD {word} {label} on top-1 ({100 * cifd['acc1']:.1f}% vs {100 * table[label]['acc1']:.1f}%).")
    cost = relative_costs(table)
    lines.append(f"Whole-pipeline training cost relative to KD, in MACs counted on the modules (the assistant's own "
                 f"training counted for the assistant methods, the teacher's one pass over the cached views for CIFD; the "
                 f"RDMs' training on cached features is under 1%): TAKD {cost['TAKD']:.2f}x, DGKD {cost['DGKD']:.2f}x, "
                 f"CIFD {cost['CIFD']:.2f}x.")
    return lines


def plot_curves(layout: ClsLayout, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, label in STUDENTS:
        epochs, acc = [], []
        for line in (layout.runs / run / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "eval" in record:
                epochs.append(record["epoch"])
                acc.append(100 * record["eval"]["val"]["metrics"]["acc1"])
        ax.plot(epochs, acc, marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="students")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Measured once, at full scale, by studies/demo_seeds.py (the demo's five student commands with seeds 1
# and 2 beside the demo's seed 0): three seeds per student do not fit the demo's ten minutes.
SEED_SPREAD = ("Over seeds 0, 1 and 2: top-1 35.9 ± 0.9 % (no KD), 38.1 ± 0.7 % (KD), 37.8 ± 0.2 % (TAKD), "
               "38.1 ± 0.7 % (DGKD) and 38.1 ± 0.3 % (CIFD), mean ± std, with the teacher at 99.6 %: CIFD beats no "
               "KD by more than the spread and ties KD, TAKD and DGKD (docs/studies/cls-demo-seeds.md; measured before the RDM "
               "finalize fix, which changes only the CIFD row: its seed-0 run after the fix gave 39.5 % against KD's "
               "38.2 %, one seed).")


def write_report(layout: ClsLayout, timings: list, *, scale: str, commands: list) -> dict:
    layout.report.mkdir(parents=True, exist_ok=True)
    table = collect(layout)
    shutil.copyfile(layout.rdm / "rdm_eval.png", layout.report / "rate_distortion.png")
    plot_curves(layout, layout.report / "training_curves.png")
    sentences = verdict(table)
    md = [f"# cifd_clip classification demo report ({scale} scale)", "",
          "The paper's CIFAR-100 comparison at CPU size, on the built-in gap task (72 classes: the colour, kind and "
          "fill of a shape over a distractor; chance 1.4%): teacher vgg8 on 8000 scenes, assistant cnn4 and students "
          "cnn2 on the first 2000 of them, all tested on the same 1000 held-out scenes. One seed per student.", "",
          "## Verdict", "", *[f"- {s}" for s in sentences], f"- {SEED_SPREAD}", f"- {PARTS_ADD}", "", "## Results", "", markdown_table(table), "",
          "## Wall time per step", "", stage_table(timings), "",
          "## Rate-distortion modules (held-out cached features)", "", (layout.rdm / "rdm_eval.md").read_text(),
          "", "![rate-distortion](rate_distortion.png)", "", "## Validation curves", "",
          "![training curves](training_curves.png)", "", "## Commands run", "", "```", *commands, "```", ""]
    (layout.report / "report.md").write_text("\n".join(md))
    (layout.report / "results.json").write_text(json.dumps({"scale": scale, "models": table, "verdict": sentences,
                                                            "relative_cost": relative_costs(table),
                                                            "stages": timings}, indent=2) + "\n")
    return {"table": markdown_table(table), "stages": stage_table(timings), "verdict": sentences}
