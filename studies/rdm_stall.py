"""Study: why can a higher-R RDM stall (no lower held-out distortion than the R below it)?

    python studies/rdm_stall.py --cache demo_out/cache [--cache OTHER] --seeds 0 1 2 [--min-steps 300]

Trains train-rdm's default family (its Config defaults: side by side, R = 100, 300, 1000, the same cache reader,
seed handling and hold-out split) in this process, and after every epoch reads, for each RDM, the MSE per
element with rounding on the held-out samples and on as many training samples, and the held-out rate. After
training (finalize() keeps the medians training rounded at) it also finalises a copy the way train-rdm did
before, re-estimating the medians by bisection, and reads its held-out MSE and how far the medians moved.
Three suspects, told apart by these columns:
- finalize: the copy's held-out MSE well above the RDM's, with medians moved by a sizeable part of a step;
- overfitting: held-out MSE far above the training MSE, its best epoch early while the training MSE falls;
- too short a run: the best held-out epoch is the last, for the higher R more than for the lower.
Writes OUT/stall.json and prints one markdown table per family (per RDM) for docs/studies/rdm-ordering.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from cifd_clip.commands.train_rdm import Config  # noqa: E402
from cifd_clip.data.embedding_cache import iter_cached_embeddings, num_cached_batches, read_cache_meta  # noqa: E402
from cifd_clip.core.rdm import RDMFamily  # noqa: E402
from cifd_clip.rdm.training import (MODALITY_KEYS, collect_embeddings, evaluate_rdm, split_batch,  # noqa: E402
                                     train_family)  # noqa: E402


def read_split(cache: str, fraction: float, held_out: bool, limit: int) -> dict:
    batches = iter_cached_embeddings(cache, batch_size=4096, shuffle=False)
    if held_out:
        return collect_embeddings(batches, holdout_fraction=fraction, max_samples=limit)
    return collect_embeddings((split_batch(b, fraction, held_out=False) for b in batches), max_samples=limit)


def study_one(cache: str, seed: int, min_steps: int) -> dict:
    cfg = Config(cache=cache, seed=seed, min_steps=min_steps)
    meta = read_cache_meta(cache)
    held = read_split(cache, cfg.holdout_fraction, True, cfg.max_eval_samples)
    train = read_split(cache, cfg.holdout_fraction, False, len(held["key"]))
    torch.manual_seed(cfg.seed)
    family = RDMFamily.build({"image": meta["image_dim"], "text": meta["text_dim"]}, cfg.rates, meta={},
                             **cfg.architecture())
    torch.manual_seed(cfg.seed + 1)
    steps = num_cached_batches(meta, batch_size=cfg.batch_size)
    epochs = max(cfg.epochs, -(-cfg.min_steps // max(steps, 1)))
    rows: list[dict] = []

    def measure(epoch: int, stage: list) -> None:
        for modality, rdm in stage:
            key = MODALITY_KEYS[modality]
            h, t = evaluate_rdm(rdm, held[key]), evaluate_rdm(rdm, train[key])
            rows.append({"epoch": epoch + 1, "modality": modality, "R": rdm.rate_weight, "held_mse": h["mse"],
                         "train_mse": t["mse"], "held_bits": h["rate_bits"]})

    train_family(family, lambda epoch: iter_cached_embeddings(cache, batch_size=cfg.batch_size, seed=cfg.seed,
                                                              epoch=epoch, all_views=True),
                 epochs=epochs, lr=cfg.lr, steps_per_epoch=steps, holdout_fraction=cfg.holdout_fraction,
                 log_every=0, density_lr_factor=cfg.density_lr_factor, continuation=cfg.rate_continuation,
                 on_epoch=measure)
    final = []
    for modality in family.modalities:
        for rdm in family.rdms(modality):
            key = MODALITY_KEYS[modality]
            h, t = evaluate_rdm(rdm, held[key]), evaluate_rdm(rdm, train[key])
            moved = re_estimated_medians(rdm)
            shift = (moved.bottleneck.quantiles[:, 0, 1] - rdm.bottleneck.quantiles[:, 0, 1]).abs()
            final.append({"modality": modality, "R": rdm.rate_weight, "held_mse": h["mse"], "train_mse": t["mse"],
                          "held_bits": h["rate_bits"], "moved_held_mse": evaluate_rdm(moved, held[key])["mse"],
                          "max_median_shift": shift.max().item(),
                          "codes_moved": rounding_changes(rdm, moved, held[key])})
    return {"cache": cache, "seed": seed, "min_steps": min_steps, "epochs": epochs, "steps_per_epoch": steps,
            "held_out": len(held["key"]), "per_epoch": rows, "finalized": final}


def re_estimated_medians(rdm):
    """A copy of the RDM finalised as before this round: medians re-estimated by bisection too."""
    moved = copy.deepcopy(rdm)
    with torch.no_grad():
        moved.bottleneck.update(force=True, update_quantiles=True)
    return moved


@torch.no_grad()
def rounding_changes(rdm, moved, x: torch.Tensor) -> float:
    """Fraction of held-out code values (samples × channels) that the moved medians round to another step."""
    y = rdm.encoder(rdm.prepare_input(x))
    m_kept, m_moved = rdm.bottleneck.quantiles[:, 0, 1], moved.bottleneck.quantiles[:, 0, 1]
    return (torch.round(y - m_kept) != torch.round(y - m_moved)).float().mean().item()


def stalls(result: dict, column: str = "held_mse") -> list[str]:
    """Neighbouring R whose held-out MSE (finalised, or `column`) does not fall, as 'modality R=lo→hi'."""
    out = []
    for modality in ("image", "text"):
        rows = sorted((r for r in result["finalized"] if r["modality"] == modality), key=lambda r: r["R"])
        out += [f"{modality} R={lo['R']:g}→{hi['R']:g}" for lo, hi in zip(rows, rows[1:])
                if not hi[column] < lo[column]]
    return out


def table(result: dict) -> str:
    lines = [f"cache `{result['cache']}`, seed {result['seed']}, min steps {result['min_steps']} "
             f"({result['epochs']} epochs × {result['steps_per_epoch']} steps, {result['held_out']} held out); "
             f"stalled: {', '.join(stalls(result)) or 'none'}; with re-estimated medians: "
             f"{', '.join(stalls(result, 'moved_held_mse')) or 'none'}", "",
             "| modality | R | train MSE | held-out MSE | with re-estimated medians | largest median shift |"
             " codes rounded to another step | best epoch (held-out MSE) | held-out bits |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in result["finalized"]:
        curve = [r for r in result["per_epoch"] if (r["modality"], r["R"]) == (f["modality"], f["R"])]
        best = min(curve, key=lambda r: r["held_mse"])
        lines.append(f"| {f['modality']} | {f['R']:g} | {f['train_mse']:.2e} | {f['held_mse']:.2e} | "
                     f"{f['moved_held_mse']:.2e} | {f['max_median_shift']:.2f} | {100 * f['codes_moved']:.1f} % | "
                     f"{best['epoch']} ({best['held_mse']:.2e}) | {f['held_bits']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", action="append", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-steps", type=int, default=0)
    parser.add_argument("--out", default="rdm_stall_out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for cache in args.cache:
        for seed in args.seeds:
            results.append(study_one(cache, seed, args.min_steps))
            print(table(results[-1]), "\n", flush=True)
            (out / "stall.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
