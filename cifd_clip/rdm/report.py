"""The RDM evaluation report: a markdown table, a JSON file and a rate-distortion plot (PNG).

The plot is the paper's Fig. 5 for the user's own teacher: per modality, held-out distortion (MSE) and,
when an eval set gave retrieval, recall@1 against the rate measured with rounding, one point per R.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def markdown_table(report: dict) -> str:
    rows = report["rdms"]
    recall_keys = sorted({k for r in rows for k in r if "recall@" in k})
    recall_keys += sorted({k for r in rows for k in r if k.startswith("zeroshot_acc")})
    recall_keys += [k for k in ("acc1", "acc5") if any(k in r for r in rows)]  # classification RDMs
    header = ["modality", "R", "rate (bits/sample, rounded)", "rate (noisy estimate)", "MSE", "‖X−X̂‖²",
              "cosine"] + recall_keys
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["modality"], f"{r['rate_weight']:g}", f"{r['rate_bits']:.2f}", f"{r['noisy_rate_bits']:.2f}",
                 f"{r['mse']:.3g}", f"{r['distortion']:.3g}", f"{r['cosine']:.4f}"]
        cells += [f"{r[k]:.4f}" if k in r else "" for k in recall_keys]
        lines.append("| " + " | ".join(cells) + " |")
    out = [f"# RDM evaluation ({report['num_samples']} held-out samples from {report.get('eval_source', '?')})", "",
           *lines, ""]
    if "teacher" in report:
        teacher = ", ".join(f"{k} {v:.4f}" for k, v in sorted(report["teacher"].items()))
        whose = "The teacher's own predictions on these samples" if any("acc1" in r for r in rows) else \
            "Teacher with its own embeddings of both modalities"
        out += [f"{whose}: {teacher}.", ""]
    if "zeroshot" in report:
        z = report["zeroshot"]
        out += [f"Zero-shot accuracy on {z['images']} images of {z['dataset']} at {z['dataset_root']} ({z['classes']} "
                f"classes x {z['templates']} templates, from {z['file']}): an image RDM's rounded reconstructions "
                f"against the teacher's text classifier; the teacher's images against a classifier of a text RDM's "
                f"reconstructed prompts.", ""]
    out += ["Rates are -log2 q(round(Y)) summed over bottleneck channels (ideal code length); MSE is per "
            "element, ‖X−X̂‖² per sample; targets are the RDMs' inputs (L2-normalised teacher embeddings unless the "
            "family reconstructs raw features).", ""]
    for w in report.get("warnings", []):
        out.append(f"**WARNING**: {w}")
    if "train" in report:
        t = report["train"]
        out += ["", f"Training: {t['epochs']} epochs, {t['steps']} steps, {t['samples']} samples, "
                    f"{t['seconds']:.1f} s ({t['embeddings_per_second']:.0f} embeddings/s feeding "
                    f"{t['num_rdms']} RDMs)."]
    return "\n".join(out) + "\n"


def plot_rate_distortion(report: dict, path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rdms"]
    modalities = list(dict.fromkeys(r["modality"] for r in rows))
    with_recall = any("recall@1" in k or k == "acc1" for r in rows for k in r)
    fig, axes = plt.subplots(1, 2 if with_recall else 1, figsize=(10 if with_recall else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    for modality in modalities:
        pts = sorted((r for r in rows if r["modality"] == modality), key=lambda r: r["rate_weight"])
        ax.plot([p["rate_bits"] for p in pts], [p["mse"] for p in pts], "o-", label=f"{modality} RDMs")
        for p in pts:
            ax.annotate(f"R={p['rate_weight']:g}", (p["rate_bits"], p["mse"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set_xlabel("rate (bits per sample, rounded)")
    ax.set_ylabel("held-out MSE to teacher embedding")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    if with_recall:
        ax = axes[0][1]
        for modality in modalities:
            metric = "text_retrieval_recall@1" if modality == "image" else "image_retrieval_recall@1"
            if any("acc1" in r for r in rows):
                metric = "acc1"  # a classifier's RDMs: accuracy against rate, the paper's Fig. 5
            pts = sorted((r for r in rows if r["modality"] == modality and metric in r), key=lambda r: r["rate_weight"])
            label = "RDM top-1 accuracy" if metric == "acc1" else \
                f"{modality} RDM → teacher {'text' if modality == 'image' else 'image'}"
            line, = ax.plot([p["rate_bits"] for p in pts], [p[metric] for p in pts], "o-", label=label)
            if "teacher" in report:
                ax.axhline(report["teacher"][metric], color=line.get_color(), ls="--", lw=1)
        ax.set_xlabel("rate (bits per sample, rounded)")
        ax.set_ylabel(("top-1 accuracy" if metric == "acc1" else "retrieval recall@1") + " (dashed: teacher)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | os.PathLike, stem: str = "rdm_eval") -> dict:
    """Write STEM.md, STEM.json and STEM.png into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json", "plot": out_dir / f"{stem}.png"}
    paths["markdown"].write_text(markdown_table(report))
    paths["json"].write_text(json.dumps(report, indent=1))
    plot_rate_distortion(report, paths["plot"])
    return paths
