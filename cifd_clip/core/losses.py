"""Loss terms for distillation: contrastive, CIFD (CLIP and classification), and the baselines.

Convention: every loss is a small `nn.Module` whose `forward` returns a dict `{term_name: weighted_term}`
of scalar tensors, with the weights given to its constructor (`self.weights` lists them by term name).
The training loop sums the values for the backward pass and logs each one; the unweighted value of a
term is `out[name] / loss.weights[name]` for a non-zero weight. Terms dropped by KD dropout are present
as zeros, so the logged keys are the same at every step.

No loss owns trainable parameters. Where a baseline compares student and teacher embeddings of
different widths, the caller passes its projection (`image_projection=`, `text_projection=`): a module
that lives in the caller's model, inside DDP and in the checkpoint — unlike CLIP-KD, which hides
trainable projections inside its loss.

Feature distances follow the paper: D(u, v) = ‖u − v‖² summed over the embedding dimension and averaged
over the batch (`reduction="sum"`); `reduction="mean"` averages over dimensions too (PyTorch's MSE), which
the classification embedding weight (100) and CLIP-KD's FD weight (2000) assume. Rates are in bits.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, DistillClipLoss
from torch import nn

from ..errors import UserError
from .rdm import distortion_per_sample

Projection = Optional[Callable[[torch.Tensor], torch.Tensor]]


def feature_distance(prediction: torch.Tensor, target: torch.Tensor, kind: str = "mse",
                     reduction: str = "sum") -> torch.Tensor:
    """Batch mean of D(prediction, target): squared error ("mse") or smooth-L1, summed ("sum") or
    averaged ("mean") over the feature dimension."""
    if prediction.shape != target.shape:
        raise UserError(f"cannot compare embeddings of shape {list(prediction.shape)} with targets of shape "
                        f"{list(target.shape)}: give the student a projection to the teacher's width")
    return distortion_per_sample(target, prediction, kind, reduction).mean()


def soft_cross_entropy(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_rows[ -Σ softmax(target) · log_softmax(logits) ]."""
    return -(target_logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def kl_divergence(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ² · mean_rows KL(softmax(target/τ) ‖ softmax(logits/τ)) (Hinton's scaling keeps gradients ~τ-free)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(target_logits / t, -1),
                  reduction="batchmean", log_target=True)
    return kl * t * t


def kd_keep_mask(num_targets: int, drop_prob: float, generator: Optional[torch.Generator] = None) -> list[bool]:
    """DGKD-style KD dropout: keep each teacher/RDM target independently with probability 1 - p.
    Pass a seeded generator for reproducible runs (all ranks may use the same seed)."""
    if not 0.0 <= drop_prob < 1.0:
        raise UserError(f"KD dropout must be in [0, 1), got {drop_prob!r}")
    if drop_prob == 0.0:
        return [True] * num_targets
    draws = torch.rand(num_targets, generator=generator)
    return [bool(d >= drop_prob) for d in draws]


def _apply(projection: Projection, x: torch.Tensor) -> torch.Tensor:
    return projection(x) if projection is not None else x


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE on L2-normalised embeddings: open_clip's ClipLoss (local loss / gather with grad)."""

    def __init__(self, weight: float = 1.0, *, local_loss: bool = False, gather_with_grad: bool = False,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.weights = {"contrastive": float(weight)}
        self.clip_loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                                  rank=rank, world_size=world_size)

    def forward(self, image_features, text_features, logit_scale) -> dict:
        return {"contrastive": self.weights["contrastive"] * self.clip_loss(image_features, text_features, logit_scale)}


class CIFDFeatureLoss(nn.Module):
    """One modality's CIFD terms: w_T·D(Û, X) + Σ_n λ_n·D(Û, X_n) + λ_I·mean_b(-log2 r(Ŵ)).

    Terms: `{prefix}teacher`, `{prefix}rdm{n}` (n = 1..N, in the RDMs' rate order), `{prefix}rate`.
    """

    def __init__(self, teacher_weight: float = 1.0, rdm_weights: Sequence[float] = (1.0, 1.0, 1.0),
                 rate_weight: float = 1e-3, *, distortion: str = "mse", reduction: str = "sum",
                 normalize_targets: bool = True, prefix: str = ""):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise UserError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.prefix, self.distortion, self.reduction = prefix, distortion, reduction
        self.normalize_targets = normalize_targets
        self.rdm_names = [f"{prefix}rdm{n + 1}" for n in range(len(rdm_weights))]
        self.weights = {f"{prefix}teacher": float(teacher_weight),
                        **{name: float(w) for name, w in zip(self.rdm_names, rdm_weights)},
                        f"{prefix}rate": float(rate_weight)}

    def forward(self, prediction: torch.Tensor, rate: Optional[torch.Tensor], teacher: torch.Tensor,
                rdm_targets: Sequence[torch.Tensor] = (), keep: Optional[Sequence[bool]] = None,
                scale: Optional[Sequence[float]] = None) -> dict:
        """`prediction` Û [B,D] (IBM output), or [1 + N, B, D] with one prediction per target (teacher first:
        `--rdm-teaching heads`), `rate` [B] bits (None without an IBM), `teacher` X [B,D], `rdm_targets` X_n
        [B,D] each; `keep[0]` / `keep[n]` switch the teacher / n-th RDM term (KD dropout); `scale` multiplies
        each target's weight (`--rdm-teaching curriculum`)."""
        if len(rdm_targets) != len(self.rdm_names):
            raise UserError(f"the CIFD loss was configured for {len(self.rdm_names)} RDM targets but got "
                            f"{len(rdm_targets)}: the RDM checkpoint and the λ_n list must match")
        keep = list(keep) if keep is not None else [True] * (1 + len(rdm_targets))
        targets = [teacher, *rdm_targets]
        names = [f"{self.prefix}teacher", *self.rdm_names]
        out = {name: prediction.new_zeros(()) for name in names}
        scale = list(scale) if scale is not None else [1.0] * len(names)
        per_target = prediction.dim() == 3
        active = [i for i, (name, kept) in enumerate(zip(names, keep))
                  if kept and self.weights[name] * scale[i] != 0.0]
        if active:
            # every kept target's distance in one batch of operations (forward and backward), not one per target
            stacked = torch.stack([targets[i].detach().float() for i in active])  # [T, B, D]
            shape = prediction.shape[1:] if per_target else prediction.shape
            if stacked.shape[1:] != shape:
                feature_distance(prediction[0] if per_target else prediction, targets[active[0]])  # the shape error
            if self.normalize_targets:
                stacked = F.normalize(stacked, dim=-1)
            predicted = prediction[active] if per_target else prediction.expand_as(stacked)
            distances = distortion_per_sample(stacked, predicted, self.distortion, self.reduction).mean(-1)  # [T]
            weights = distances.new_tensor([self.weights[names[i]] * scale[i] for i in active])
            out.update(zip([names[i] for i in active], (distances * weights).unbind()))
        rate_name = f"{self.prefix}rate"
        out[rate_name] = self.weights[rate_name] * rate.mean() if rate is not None else prediction.new_zeros(())
        return out


# ---------------------------------------------------------------- CLIP baselines

class _PairwiseLogits(nn.Module):
    """Shares open_clip's ClipLoss gathering (local loss / gather with grad) with the baselines."""

    def __init__(self, local_loss=False, gather_with_grad=False, rank=0, world_size=1):
        super().__init__()
        self.clip_loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                                  rank=rank, world_size=world_size)

    def logits(self, a, b, scale):
        return self.clip_loss.get_logits(a, b, scale)

    def labels(self, logits):
        return self.clip_loss.get_ground_truth(logits.device, logits.shape[0])


class DistillClipLossTerms(nn.Module):
    """open_clip's DistillClipLoss (contrastive + soft CE on the teacher's batch affinities), reused as is.
    Each model uses its own logit scale; teacher features must be in the student's space (projection)."""

    def __init__(self, contrastive_weight: float = 1.0, distill_weight: float = 1.0, *, local_loss=False,
                 gather_with_grad=False, rank=0, world_size=1):
        super().__init__()
        self.weights = {"contrastive": float(contrastive_weight), "distill": float(distill_weight)}
        self.loss = DistillClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank,
                                    world_size=world_size)

    def forward(self, image_features, text_features, logit_scale, teacher_image, teacher_text,
                teacher_logit_scale) -> dict:
        terms = self.loss(image_features, text_features, logit_scale, teacher_image.detach(),
                          teacher_text.detach(), teacher_logit_scale, output_dict=True)
        return {"contrastive": self.weights["contrastive"] * terms["contrastive_loss"],
                "distill": self.weights["distill"] * terms["distill_loss"]}


class FeatureDistillationLoss(nn.Module):
    """CLIP-KD's FD: MSE (mean over elements) between L2-normalised student and teacher embeddings, summed
    over both modalities. The student embeddings go through the caller's projections first, if given."""

    def __init__(self, weight: float = 2000.0):
        super().__init__()
        self.weights = {"fd": float(weight)}

    def forward(self, image_features, text_features, teacher_image, teacher_text,
                image_projection: Projection = None, text_projection: Projection = None) -> dict:
        s_img = F.normalize(_apply(image_projection, image_features), dim=-1)
        s_txt = F.normalize(_apply(text_projection, text_features), dim=-1)
        t_img = F.normalize(teacher_image.detach().float(), dim=-1)
        t_txt = F.normalize(teacher_text.detach().float(), dim=-1)
        fd = feature_distance(s_img, t_img, reduction="mean") + feature_distance(s_txt, t_txt, reduction="mean")
        return {"fd": self.weights["fd"] * fd}


class InteractiveContrastiveLoss(_PairwiseLogits):
    """CLIP-KD's ICL: InfoNCE of student images against teacher texts and student texts against teacher
    images (student logit scale), averaged over the two directions."""

    def __init__(self, weight: float = 1.0, **gather):
        super().__init__(**gather)
        self.weights = {"icl": float(weight)}

    def forward(self, image_features, text_features, logit_scale, teacher_image, teacher_text,
                image_projection: Projection = None, text_projection: Projection = None) -> dict:
        s_img = F.normalize(_apply(image_projection, image_features), dim=-1)
        s_txt = F.normalize(_apply(text_projection, text_features), dim=-1)
        t_img = F.normalize(teacher_image.detach().float(), dim=-1)
        t_txt = F.normalize(teacher_text.detach().float(), dim=-1)
        image_to_teacher_text, _ = self.logits(s_img, t_txt, logit_scale)
        text_to_teacher_image, _ = self.logits(s_txt, t_img, logit_scale)
        labels = self.labels(image_to_teacher_text)
        icl = (F.cross_entropy(image_to_teacher_text, labels) + F.cross_entropy(text_to_teacher_image, labels)) / 2
        return {"icl": self.weights["icl"] * icl}


class ContrastiveRelationalLoss(_PairwiseLogits):
    """CLIP-KD's CRD: KL(teacher ‖ student) between the image→text and text→image contrastive
    distributions of each model (each with its own logit scale), averaged over the two directions."""

    def __init__(self, weight: float = 1.0, **gather):
        super().__init__(**gather)
        self.weights = {"crd": float(weight)}

    def forward(self, image_features, text_features, logit_scale, teacher_image, teacher_text,
                teacher_logit_scale) -> dict:
        s_i2t, s_t2i = self.logits(image_features, text_features, logit_scale)
        with torch.no_grad():
            t_i2t, t_t2i = self.logits(teacher_image.float(), teacher_text.float(), teacher_logit_scale)
        crd = (kl_divergence(t_i2t, s_i2t) + kl_divergence(t_t2i, s_t2i)) / 2
        return {"crd": self.weights["crd"] * crd}


class AffinityMimickingLoss(_PairwiseLogits):
    """TinyCLIP's affinity mimicking: cross-entropy between the teacher's and the student's image→text and
    text→image affinity distributions, averaged over the two directions. (It equals open_clip's
    distill term; kept separate so a config can name the baseline it reproduces.)"""

    def __init__(self, weight: float = 1.0, **gather):
        super().__init__(**gather)
        self.weights = {"affinity": float(weight)}

    def forward(self, image_features, text_features, logit_scale, teacher_image, teacher_text,
                teacher_logit_scale) -> dict:
        s_i2t, s_t2i = self.logits(image_features, text_features, logit_scale)
        with torch.no_grad():
            t_i2t, t_t2i = self.logits(teacher_image.float(), teacher_text.float(), teacher_logit_scale)
        affinity = (soft_cross_entropy(t_i2t, s_i2t) + soft_cross_entropy(t_t2i, s_t2i)) / 2
        return {"affinity": self.weights["affinity"] * affinity}


# ---------------------------------------------------------------- classification

class CIFDClassificationLoss(nn.Module):
    """The paper's classification loss:
    λ_CE·CE(y, v_S) + λ_KL·KL(v_T‖v_S) + λ_KL·Σ_n λ_n·KL(v_n‖v_S)
      + w_emb·(D(Û, u_T) + Σ_n λ_n·D(Û, u_n)) + λ_I·(-log2 r(Ŵ)),   KL at temperature τ (× τ²).

    Terms: ce, kd_teacher, kd_rdm{n}, emb_teacher, emb_rdm{n}, rate. KD dropout drops a teacher/RDM's
    KL and embedding terms together.
    """

    def __init__(self, rdm_weights: Sequence[float] = (1.0, 1.0, 1.0), *, ce_weight: float = 1.0,
                 kl_weight: float = 1.0, embedding_weight: float = 100.0, rate_weight: float = 0.005,
                 temperature: float = 2.0, kd_dropout: float = 0.25, distortion: str = "mse",
                 reduction: str = "mean", normalize_targets: bool = False):
        super().__init__()
        kd_keep_mask(0, kd_dropout)
        if temperature <= 0:
            raise UserError(f"KD temperature must be positive, got {temperature!r}")
        self.temperature, self.kd_dropout = temperature, kd_dropout
        self.kd_names = ["kd_teacher"] + [f"kd_rdm{n + 1}" for n in range(len(rdm_weights))]
        self.kd_weights = [kl_weight] + [kl_weight * w for w in rdm_weights]
        self.embedding = CIFDFeatureLoss(embedding_weight, [embedding_weight * w for w in rdm_weights],
                                         rate_weight, distortion=distortion, reduction=reduction,
                                         normalize_targets=normalize_targets, prefix="emb_")
        self.weights = {"ce": float(ce_weight), **dict(zip(self.kd_names, map(float, self.kd_weights))),
                        **{("rate" if k == "emb_rate" else k): v for k, v in self.embedding.weights.items()}}

    def forward(self, logits, labels, ibm: dict, teacher_logits, teacher_embedding,
                rdm_logits: Sequence[torch.Tensor] = (), rdm_embeddings: Sequence[torch.Tensor] = (),
                generator: Optional[torch.Generator] = None, scale: Optional[Sequence[float]] = None) -> dict:
        """`ibm["output"]` is Û [B,D] or one prediction per target [1 + N, B, D]; `scale` multiplies each
        target's KD and feature weights (teacher first), see `CIFDFeatureLoss`."""
        if len(rdm_logits) != len(self.kd_names) - 1:
            raise UserError(f"the CIFD loss was configured for {len(self.kd_names) - 1} RDMs but got "
                            f"{len(rdm_logits)} RDM logits")
        keep = kd_keep_mask(len(self.kd_names), self.kd_dropout, generator)
        scale = list(scale) if scale is not None else [1.0] * len(self.kd_names)
        out = {"ce": self.weights["ce"] * F.cross_entropy(logits, labels)}
        for name, weight, target, kept, factor in zip(self.kd_names, self.kd_weights, [teacher_logits, *rdm_logits],
                                                      keep, scale):
            out[name] = (weight * factor * kl_divergence(target.detach(), logits, self.temperature)
                         if kept and weight * factor != 0.0 else logits.new_zeros(()))
        emb = self.embedding(ibm["output"], ibm.get("rate"), teacher_embedding, rdm_embeddings, keep, scale)
        out.update({("rate" if k == "emb_rate" else k): v for k, v in emb.items()})
        return out


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """1 - Pearson correlation of a and b along `dim`, averaged over the other dimension."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return 1 - (F.cosine_similarity(a, b, dim=dim, eps=1e-8)).mean()


def dist_loss(teacher_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0) -> torch.Tensor:
    """DIST (Huang et al. 2022): τ²·[β·inter + γ·intra], inter = 1 - Pearson over classes per sample, intra =
    1 - Pearson over the batch per class, on softmax(·/τ)."""
    p_s, p_t = (logits / temperature).softmax(-1), (teacher_logits / temperature).softmax(-1)
    inter, intra = _pearson_distance(p_s, p_t, dim=1), _pearson_distance(p_s, p_t, dim=0)
    return temperature ** 2 * (beta * inter + gamma * intra)


def normalized_kd(teacher_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """NormKD (Chi et al. 2023): KD where each sample's logits are divided by their own standard deviation
    times τ (a per-sample temperature), scaled by τ² as Hinton's KD."""
    t = teacher_logits / (teacher_logits.std(-1, keepdim=True) + 1e-6)
    s = logits / (logits.std(-1, keepdim=True) + 1e-6)
    return kl_divergence(t, s, temperature)


def in_batch_contrastive(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between L2-normalised student and teacher embeddings, the batch as negatives, both directions."""
    logits = student @ teacher.T / temperature
    labels = torch.arange(len(student), device=student.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def attention_map(feature_map: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: mean over channels of the squared activations, flattened and L2-normalised."""
    return F.normalize(feature_map.pow(2).mean(1).flatten(1), dim=-1)


def attention_transfer(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """mean of (a_S - a_T)² (RepDistiller's AT, on one pair of maps); the student's map is resized to the
    teacher's spatial size when they differ."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.adaptive_avg_pool2d(student_map, teacher_map.shape[-2:])
    return (attention_map(student_map) - attention_map(teacher_map)).pow(2).mean()


def factor_transfer(student_factor: torch.Tensor, teacher_factor: torch.Tensor) -> torch.Tensor:
    """Kim et al.'s FT: mean absolute difference of the L2-normalised, flattened factors."""
    s = F.normalize(student_factor.flatten(1), dim=-1)
    t = F.normalize(teacher_factor.flatten(1), dim=-1)
    return (s - t).abs().mean()
