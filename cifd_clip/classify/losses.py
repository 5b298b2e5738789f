"""Loss terms of the classification baselines added for the paper's comparison (WSLD, IPWD, IFD, MGD, CRD's
memory, AT on every stage): plain functions of tensors, unweighted; the methods in `classify.methods` own the
trainable parts and the weights. The older baselines' terms are in `cifd_clip.core.losses`."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..core.losses import attention_map

NCE_EPS = 1e-7  # RepDistiller's ContrastLoss


def kl_per_sample(teacher_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(v_T/τ) ‖ softmax(v_S/τ)) of each row [B] (no τ² factor)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), reduction="none",
                    log_target=True).sum(-1)


def weighted_soft_label_kd(teacher_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """WSLD (Zhou et al. 2021): τ²·mean_i[w_i·KL_i], w_i = 1 − exp(−CE_S,i / CE_T,i), both cross-entropies on the
    label at τ = 1 and detached. The released code weights the soft cross-entropy instead of the KL: they differ
    by the teacher's entropy, which has no gradient."""
    with torch.no_grad():
        ce_student = F.cross_entropy(logits, labels, reduction="none")
        ce_teacher = F.cross_entropy(teacher_logits, labels, reduction="none")
        weight = 1 - torch.exp(-(ce_student / (ce_teacher + 1e-7)).clamp_min(0))
    return temperature ** 2 * (weight * kl_per_sample(teacher_logits, logits, temperature)).mean()


def inverse_propensity_weights(teacher_mass: torch.Tensor, label_counts: torch.Tensor) -> torch.Tensor:
    """IPWD's weight of each class: its share of the labels (the human domain) over its share of the teacher's
    predicted probability mass (the machine domain), scaled so that the mean weight over the samples is 1."""
    p_machine = teacher_mass / teacher_mass.sum()
    p_human = label_counts / label_counts.sum()
    weights = p_human / p_machine.clamp_min(1e-12)
    return weights / (p_human * weights).sum()


def inverse_propensity_kd(teacher_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                          class_weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·mean_i[w(y_i)·KL_i]: KD with each sample weighted by its class's inverse propensity."""
    return temperature ** 2 * (class_weights[labels] * kl_per_sample(teacher_logits, logits, temperature)).mean()


def ensemble_direction_loss(projections: Sequence[torch.Tensor], teacher_features: torch.Tensor) -> torch.Tensor:
    """IFD (Chen et al. 2022): mean over the batch of 1 − cos(mean of the projections, teacher features)."""
    mean = torch.stack(list(projections)).mean(0)
    return (1 - F.cosine_similarity(mean, teacher_features, dim=-1)).mean()


def channel_keep_mask(batch: int, channels: int, ratio: float, generator: Optional[torch.Generator] = None,
                      device=None) -> torch.Tensor:
    """MGD's random mask [B, C]: 0 for a masked channel (probability `ratio`), 1 otherwise; drawn on the CPU from
    `generator` so that a seeded run draws the same masks on any device."""
    draws = torch.rand(batch, channels, generator=generator)
    return (draws >= ratio).float().to(device)


def generation_error(generated: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MGD's distance: squared error summed over every element, divided by the batch size."""
    return (generated - teacher).pow(2).sum() / len(teacher)


def nce_contrast_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """CRD's NCE loss (Tian et al. 2020, Eq. 18; RepDistiller's ContrastLoss): `scores` [B, 1 + K] are
    exp(s·t/τ)/Z with the positive first; noise distribution uniform over the `num_data` training samples."""
    noise = (scores.shape[1] - 1) / num_data  # K · P_n
    log_positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + NCE_EPS))
    log_negatives = torch.log(noise / (scores[:, 1:] + noise + NCE_EPS))
    return -(log_positive.sum() + log_negatives.sum()) / len(scores)


def attention_transfer_pair(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """RepDistiller's AT on one pair of maps (p = 2): the larger map is average-pooled to the smaller's size."""
    if student_map.shape[-1] > teacher_map.shape[-1]:
        student_map = F.adaptive_avg_pool2d(student_map, teacher_map.shape[-2:])
    elif student_map.shape[-1] < teacher_map.shape[-1]:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, student_map.shape[-2:])
    return (attention_map(student_map) - attention_map(teacher_map)).pow(2).mean()


def attention_transfer_stages(student_maps: Sequence[torch.Tensor],
                              teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """AT summed over the stages. Models with different numbers of stages are paired from the last stage
    backwards: the first stages of the model with more of them take no part."""
    pairs = min(len(student_maps), len(teacher_maps))
    return sum(attention_transfer_pair(s, t) for s, t in zip(student_maps[-pairs:], teacher_maps[-pairs:]))
