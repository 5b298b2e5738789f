"""Train and evaluate a family of RDMs on teacher embeddings (no teacher model involved).

One batch of cached embeddings feeds every RDM of both modalities (with rate continuation, see
`train_family`, first the highest-R RDMs alone): the losses of the independent RDMs are summed, so one
backward pass gives each RDM exactly its own gradient. Under torchrun each rank
reads its own part of the data and gradients are averaged with one all-reduce per step (the RDMs are
tiny, so a flat all-reduce is simpler than DDP and just as fast).

Batches are dicts with `t_image_emb` / `t_text_emb` (what `cifd_clip.data.embedding_cache.iter_cached_embeddings`
yields); any iterable of such dicts works, which is how the tests train on in-memory tensors.
"""
from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..engine.schedule import density_parameter_ids
from ..errors import DataError
from ..core.rdm import RateDistortionModule, RDMFamily
from ..evaluation.cached_zeroshot import zeroshot_metrics

log = logging.getLogger(__name__)

MODALITY_KEYS = {"image": "t_image_emb", "text": "t_text_emb"}
DENSITY_LR_FACTOR = 10.0


def is_held_out(key: str, fraction: float) -> bool:
    """A stable per-sample split by key: the same samples are held out on every rank and every epoch."""
    if fraction <= 0:
        return False
    return (zlib.crc32(str(key).encode()) % 100_000) < fraction * 100_000


def split_batch(batch: dict, fraction: float, held_out: bool) -> dict:
    """The part of a batch on one side of the key split (the whole batch when there is no key or split)."""
    keys = batch.get("key")
    if fraction <= 0 or keys is None:
        return batch if not held_out else {}
    mask = torch.tensor([is_held_out(k, fraction) == held_out for k in keys], dtype=torch.bool)
    out = {name: value[mask] for name, value in batch.items() if torch.is_tensor(value) and len(value) == len(keys)}
    out["key"] = [k for k, m in zip(keys, mask.tolist()) if m]
    return out


@dataclass
class TrainStats:
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    last_terms: dict = field(default_factory=dict)

    @property
    def embeddings_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def family_loss(family: RDMFamily, batch: dict, rdms: Optional[Sequence[tuple[str, RateDistortionModule]]] = None
                ) -> tuple[torch.Tensor, dict]:
    """Sum of every RDM's L_R on this batch (or of the given (modality, RDM) pairs'), and the terms per
    (modality, R) for logging."""
    if rdms is None:
        rdms = [(modality, rdm) for modality in family.modalities for rdm in family.rdms(modality)]
    total, terms, inputs = None, {}, {}
    for modality, rdm in rdms:
        if modality not in inputs:
            x = batch[MODALITY_KEYS[modality]]
            inputs[modality] = x.reshape(-1, x.shape[-1])  # [B, K, D] views -> [B·K, D]
        x = inputs[modality]
        # a classifier teacher's RDMs (with a head) also learn the labels and the teacher's logits
        parts = rdm.loss(rdm(x), batch.get("label"), batch.get("t_logits")) if rdm.head is not None \
            else rdm.loss(rdm(x))
        loss = sum(parts.values())
        total = loss if total is None else total + loss
        terms.update({f"{modality}/R={rdm.rate_weight:g}/{k}": v.detach() for k, v in parts.items()})
    return total, terms


def _average_gradients(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _broadcast_parameters(family: RDMFamily) -> None:
    import torch.distributed as dist

    for tensor in list(family.parameters()) + list(family.buffers()):
        dist.broadcast(tensor.data, src=0)


# The bottleneck's coding tables: their sizes follow the weights, and `finalize` rebuilds them.
CODING_TABLES = ("bottleneck._offset", "bottleneck._quantized_cdf", "bottleneck._cdf_length")


def _weights(rdm: RateDistortionModule) -> dict:
    return {k: v.detach().clone() for k, v in rdm.state_dict().items() if k not in CODING_TABLES}


def training_stages(family: RDMFamily, continuation: bool) -> list[list[tuple[str, RateDistortionModule]]]:
    """Which RDMs train together, stage after stage: all at once, or (rate continuation) first the highest R of
    each modality alone, then every RDM from that one's weights."""
    pairs = [[(m, rdm) for rdm in family.rdms(m)] for m in family.modalities]
    every = [pair for modality in pairs for pair in modality]
    if not continuation or all(len(modality) == 1 for modality in pairs):
        return [every]
    return [[modality[-1] for modality in pairs], every]


def train_family(family: RDMFamily, epoch_batches: Callable[[int], Iterable[dict]], *, epochs: int,
                 lr: float = 1e-3, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 steps_per_epoch: Optional[int] = None, holdout_fraction: float = 0.0, log_every: int = 50,
                 density_lr_factor: float = DENSITY_LR_FACTOR, continuation: bool = False,
                 score: Optional[Callable[[RateDistortionModule], float]] = None,
                 on_step: Optional[Callable[[int, dict], None]] = None,
                 on_epoch: Optional[Callable[[int, list], None]] = None) -> TrainStats:
    """Train every RDM of `family` for `epochs` passes over `epoch_batches(epoch)`.

    With `continuation` (rate continuation, cls-train-rdm's default) the highest R of each modality first trains
    alone from its initialisation, then every RDM of the modality (that one included) trains from its weights,
    side by side. From a shared start θ trained for R_max, the objective R·D + rate of a lower R has the
    gradient (R − R_max)·∇D (R_max's own is ~0 there), so each lower R starts by giving up distortion for
    bits, the further the lower its R. Without it (one stage) every RDM starts from its own initialisation and
    is as far from converged as its seed leaves it after the few hundred steps a small cache gives.
    docs/studies/rdm-ordering.md: ordered classification families 10 of 10 with continuation, 6 of 10 without;
    CLIP families 7 of 8 with, 8 of 8 without (train-rdm keeps it off). A chain (each R from the next higher
    one) was tried first: the first RDM was the least trained, and the next R below beat it on distortion.
    Continuation costs one more stage, (N + 1)/N of the compute (none for one RDM per modality).

    Each stage: Adam (no weight decay), cosine decay to lr/100 when `steps_per_epoch` is known. The
    bottlenecks' densities (and quantiles) learn `density_lr_factor` times faster than the networks: at the
    shared rate they are still at their initial width after a few hundred steps, every rate R then pays the
    same ~1 bit per channel and the family does not order by R (CompressAI's codecs train ~1M steps).
    A batch's image embeddings may hold several views per sample ([B, K, D]): every view is trained on.
    Samples with `is_held_out(key, holdout_fraction)` are skipped (the evaluation reads them). `score(rdm)`
    (held-out, higher is better), when given, is read after every epoch and each RDM keeps its best epoch's
    weights (the shared start is the highest R's best epoch). `on_epoch(epoch, rdms)` gets the stage's
    (modality, RDM) pairs.
    After training each bottleneck is finalised (exact quantiles, CDF tables) and the family is in eval mode.
    """
    device = torch.device(device)
    family.to(device).train()
    if world_size > 1:
        _broadcast_parameters(family)
    stats = TrainStats()
    start = time.perf_counter()
    below: dict = {}  # modality -> the RDM of the previous stage that this one starts from
    for stage in training_stages(family, continuation):
        starts = {m: _weights(r) for m, r in below.items()}  # copied first: the stage trains `below` too
        for modality, rdm in stage:
            if modality in starts:
                rdm.load_state_dict(starts[modality], strict=False)
        best = {id(rdm): (float("-inf"), None) for _, rdm in stage}

        def end_epoch(epoch: int, stage=stage, best=best) -> None:
            for _, rdm in stage:
                if score is not None:
                    value = score(rdm)
                    if value > best[id(rdm)][0]:
                        best[id(rdm)] = (value, _weights(rdm))
            if on_epoch is not None:
                on_epoch(epoch, stage)

        _train_stage(family, stage, epoch_batches, epochs=epochs, lr=lr, device=device, rank=rank,
                     world_size=world_size, steps_per_epoch=steps_per_epoch, holdout_fraction=holdout_fraction,
                     log_every=log_every, density_lr_factor=density_lr_factor, stats=stats, on_step=on_step,
                     on_epoch=end_epoch)
        for modality, rdm in stage:
            if best[id(rdm)][1] is not None:
                rdm.load_state_dict(best[id(rdm)][1], strict=False)
            below[modality] = rdm
    stats.seconds = time.perf_counter() - start
    for modality in family.modalities:
        for rdm in family.rdms(modality):
            rdm.finalize()
    family.eval()
    return stats


def _train_stage(family: RDMFamily, stage: list, epoch_batches: Callable[[int], Iterable[dict]], *, epochs: int,
                 lr: float, device: torch.device, rank: int, world_size: int, steps_per_epoch: Optional[int],
                 holdout_fraction: float, log_every: int, density_lr_factor: float, stats: TrainStats,
                 on_step: Optional[Callable[[int, dict], None]], on_epoch: Callable[[int], None]) -> None:
    params = [p for _, rdm in stage for p in rdm.parameters() if p.requires_grad]
    density = density_parameter_ids(family)
    optimizer = torch.optim.Adam([{"params": [p for p in params if id(p) not in density]},
                                  {"params": [p for p in params if id(p) in density], "lr": lr * density_lr_factor}],
                                 lr=lr)
    total_steps = steps_per_epoch * epochs if steps_per_epoch else None
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=lr / 100)
                 if total_steps else None)
    for epoch in range(epochs):
        seen_this_epoch = 0
        for batch in epoch_batches(epoch):
            batch = split_batch(batch, holdout_fraction, held_out=False)
            n = len(batch.get("key", ())) if "key" in batch else len(next(iter(batch.values())))
            optimizer.zero_grad(set_to_none=False)
            if n > 0:
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, terms = family_loss(family, batch, stage)
                if not torch.isfinite(loss):
                    bad = [k for k, v in terms.items() if not torch.isfinite(v)]
                    raise DataError(f"RDM training diverged at step {stats.steps} (non-finite {bad[0] if bad else 'loss'}); "
                                    f"lower --lr or check the cache for non-finite embeddings")
                loss.backward()
                stats.last_terms = terms
            if world_size > 1:  # every rank calls this once per step, even with an empty batch
                _average_gradients(params, world_size)
            optimizer.step()
            if scheduler is not None and scheduler.last_epoch < total_steps:
                scheduler.step()
            stats.steps += 1
            stats.samples += n
            seen_this_epoch += n
            if on_step is not None:
                on_step(stats.steps, stats.last_terms)
            if log_every and stats.steps % log_every == 0 and rank == 0 and stats.last_terms:
                log.info("step %d epoch %d: %s", stats.steps, epoch, _summarise(stats.last_terms))
        if seen_this_epoch == 0 and rank == 0:
            raise DataError("the embedding cache yielded no training samples this epoch")
        on_epoch(epoch)


def _summarise(terms: dict) -> str:
    per_rdm: dict = {}
    for name, value in terms.items():
        modality, r, term = name.split("/")
        per_rdm.setdefault(f"{modality} {r}", {})[term] = float(value)
    return "; ".join(f"{k}: rate {v['rdm_rate']:.1f} b, R·D {v['rdm_distortion']:.3f}" for k, v in per_rdm.items())


# ---------------------------------------------------------------- evaluation


def collect_embeddings(batches: Iterable[dict], *, holdout_fraction: float = 0.0, max_samples: Optional[int] = None
                       ) -> dict:
    """Concatenate (the held-out part of) batches into {"t_image_emb": [N, D], "t_text_emb": [N, D], "key": [...]}."""
    parts: dict = {k: [] for k in MODALITY_KEYS.values()}
    keys: list = []
    count = 0
    for batch in batches:
        if holdout_fraction > 0:
            batch = split_batch(batch, holdout_fraction, held_out=True)
            if not batch.get("key"):
                continue
        for k in parts:
            if k in batch:
                parts[k].append(batch[k].float().cpu())
        keys.extend(batch.get("key", []))
        count += len(next(iter(v for v in batch.values() if torch.is_tensor(v))))
        if max_samples and count >= max_samples:
            break
    out = {k: torch.cat(v)[:max_samples] if max_samples else torch.cat(v) for k, v in parts.items() if v}
    out["key"] = keys[:max_samples] if max_samples else keys
    return out


@torch.no_grad()
def evaluate_rdm(rdm, x: torch.Tensor, batch_size: int = 4096) -> dict:
    """Held-out metrics of one RDM on embeddings x [N, D]: rate with rounding (bits/sample, the ideal code
    length under its density), the noisy-training estimate of the rate, distortion (the trained D, summed
    over dims), MSE per element and cosine similarity, all against the RDM's (normalised) target."""
    was_training = rdm.training
    sums = {"rate_bits": 0.0, "noisy_rate_bits": 0.0, "distortion": 0.0, "mse": 0.0, "cosine": 0.0}
    device = next(rdm.parameters()).device
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size].to(device)
        rdm.eval()
        out = rdm(chunk)
        target, recon = out["target"], out["reconstruction"]
        sums["rate_bits"] += out["rate"].sum().item()
        sums["distortion"] += out["distortion"].sum().item()
        sums["mse"] += (target - recon).pow(2).mean(-1).sum().item()
        sums["cosine"] += F.cosine_similarity(target, recon, dim=-1).sum().item()
        rdm.train()
        sums["noisy_rate_bits"] += rdm(chunk)["rate"].sum().item()
    rdm.train(was_training)
    return {k: v / len(x) for k, v in sums.items()}


@torch.no_grad()
def retrieval_recall(queries: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int] = (1, 5),
                     chunk: int = 1024) -> dict:
    """Recall@K of query i finding gallery item i (one positive per query), cosine similarity."""
    q, g = F.normalize(queries.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    hits = {k: 0 for k in ks}
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ g.T
        positive = sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))]
        rank = (sims > positive[:, None]).sum(-1)  # items scoring strictly higher than the positive
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / len(q) for k in ks}


def evaluate_family(family: RDMFamily, data: dict, *, retrieval: bool = False, ks: Sequence[int] = (1, 5),
                    zeroshot: Optional[dict] = None) -> dict:
    """Per-RDM metrics (list ordered by modality, then R) and, with `retrieval` or `zeroshot`, the teacher's own.

    Retrieval pairs the RDM's reconstruction of one modality with the teacher's embeddings of the other:
    an image RDM gives text retrieval (image → text, CLIP_benchmark's `text_retrieval_recall@K`), a text
    RDM gives image retrieval (`image_retrieval_recall@K`). One caption per image. `zeroshot` (a
    `cifd_clip.evaluation.cached_zeroshot` eval file) adds `zeroshot_acc1`/`zeroshot_acc5`: an image RDM's reconstructed
    images against the teacher's text classifier, or the teacher's images against a classifier built from
    a text RDM's reconstructed prompts. Both are skipped when the two modalities have different widths
    (not a shared embedding space).
    """
    shared = data["t_image_emb"].shape[-1] == data["t_text_emb"].shape[-1]
    retrieval = retrieval and shared
    zeroshot = zeroshot if shared else None
    results = []
    for modality in family.modalities:
        x = data[MODALITY_KEYS[modality]]
        for rdm in family.rdms(modality):
            row = {"modality": modality, "rate_weight": rdm.rate_weight, **evaluate_rdm(rdm, x)}
            if retrieval:
                recon = rdm.teach(x.to(next(rdm.parameters()).device)).cpu()
                other = data[MODALITY_KEYS["text" if modality == "image" else "image"]]
                metric = "text_retrieval_recall" if modality == "image" else "image_retrieval_recall"
                row.update({f"{metric}@{k}": v for k, v in retrieval_recall(recon, other, ks).items()})
            if zeroshot is not None:
                device = next(rdm.parameters()).device
                fn = lambda x, rdm=rdm: rdm.teach(x.to(device))  # noqa: E731
                row.update(zeroshot_metrics(zeroshot, **{f"{modality}_fn": fn}))
            results.append(row)
    out = {"num_samples": len(next(iter(v for v in data.values() if torch.is_tensor(v)))), "rdms": results,
           "warnings": ordering_warnings(results)}
    if zeroshot is not None:
        out["teacher"] = zeroshot_metrics(zeroshot)
        out["zeroshot"] = {"file": zeroshot.get("path"), "dataset": zeroshot.get("dataset"),
                           "dataset_root": zeroshot.get("dataset_root"), "images": len(zeroshot["labels"]),
                           "classes": len(zeroshot["classnames"]), "templates": len(zeroshot["templates"])}
    if retrieval:
        img, txt = data["t_image_emb"], data["t_text_emb"]
        teacher = out.setdefault("teacher", {})
        teacher.update({f"text_retrieval_recall@{k}": v for k, v in retrieval_recall(img, txt, ks).items()})
        teacher.update({f"image_retrieval_recall@{k}": v for k, v in retrieval_recall(txt, img, ks).items()})
    return out


def ordering_warnings(results: list[dict]) -> list[str]:
    """Sentences for every pair of neighbouring R where a higher R did not give a higher held-out rate and
    a lower distortion (the family should behave like teacher assistants of increasing size)."""
    warnings = []
    for modality in dict.fromkeys(r["modality"] for r in results):
        rows = sorted((r for r in results if r["modality"] == modality), key=lambda r: r["rate_weight"])
        for lo, hi in zip(rows, rows[1:]):
            problems = []
            if not hi["rate_bits"] > lo["rate_bits"]:
                problems.append(f"rate {hi['rate_bits']:.2f} <= {lo['rate_bits']:.2f} bits")
            if not hi["mse"] < lo["mse"]:
                problems.append(f"MSE {hi['mse']:.3g} >= {lo['mse']:.3g}")
            if problems:
                warnings.append(f"{modality} RDMs are not ordered by R: R={hi['rate_weight']:g} vs "
                                f"R={lo['rate_weight']:g} gives {' and '.join(problems)}; train longer or spread the "
                                f"rates further apart")
    return warnings

