"""Each loss term against a hand computation on a small batch (explicit loops, not the code under test)."""
import math

import pytest
import torch

from cifd_clip.errors import UserError
from cifd_clip.core.losses import (AffinityMimickingLoss, CIFDClassificationLoss, CIFDFeatureLoss, ContrastiveLoss,
                                      ContrastiveRelationalLoss, DistillClipLossTerms, FeatureDistillationLoss,
                                      InteractiveContrastiveLoss, kd_keep_mask)
from cifd_clip.distill.methods import CIFD, StudentOutputs, Targets
from cifd_clip.distill.settings import LossSettings

B, D = 4, 3
torch.manual_seed(0)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def log_softmax_row(row):
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def ce_rows(logits, labels):
    return sum(-log_softmax_row(logits[i].tolist())[labels[i]] for i in range(len(labels))) / len(labels)


def kl_rows(target, logits, t=1.0):
    total = 0.0
    for tr, sr in zip(target.tolist(), logits.tolist()):
        lp = log_softmax_row([v / t for v in tr])
        lq = log_softmax_row([v / t for v in sr])
        total += sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
    return total / len(target) * t * t


def soft_ce_rows(target, logits):
    total = 0.0
    for tr, sr in zip(target.tolist(), logits.tolist()):
        lp, lq = log_softmax_row(tr), log_softmax_row(sr)
        total += -sum(math.exp(a) * b for a, b in zip(lp, lq))
    return total / len(target)


def sq_sum(a, b):  # mean over the batch of the squared distance
    return sum(sum((x - y) ** 2 for x, y in zip(ra, rb)) for ra, rb in zip(a.tolist(), b.tolist())) / len(a)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {k: unit(torch.randn(B, D, generator=g)) for k in ("img", "txt", "t_img", "t_txt")}


def test_contrastive_is_symmetric_infonce(batch):
    scale = 10.0
    out = ContrastiveLoss(weight=0.5)(batch["img"], batch["txt"], scale)
    logits = scale * batch["img"] @ batch["txt"].T
    labels = list(range(B))
    expected = (ce_rows(logits, labels) + ce_rows(logits.T, labels)) / 2
    assert out["contrastive"].item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_cifd_feature_terms_match_method_formula(batch):
    g = torch.Generator().manual_seed(2)
    u_img = torch.randn(B, D, generator=g)
    rate_img = torch.rand(B, generator=g) * 50
    rdm_img = [torch.randn(B, D, generator=g) for _ in range(2)]
    loss = CIFDFeatureLoss(teacher_weight=2.0, rdm_weights=[0.3, 0.7], rate_weight=0.01, normalize_targets=False,
                           prefix="image_")
    out = loss(u_img, rate_img, batch["t_img"], rdm_img)
    assert set(out) == {"image_teacher", "image_rdm1", "image_rdm2", "image_rate"}
    assert out["image_teacher"].item() == pytest.approx(2.0 * sq_sum(u_img, batch["t_img"]), rel=1e-5)
    assert out["image_rdm1"].item() == pytest.approx(0.3 * sq_sum(u_img, rdm_img[0]), rel=1e-5)
    assert out["image_rdm2"].item() == pytest.approx(0.7 * sq_sum(u_img, rdm_img[1]), rel=1e-5)
    assert out["image_rate"].item() == pytest.approx(0.01 * sum(rate_img.tolist()) / B, rel=1e-5)


def test_cifd_normalises_targets_by_default():
    u = torch.randn(B, D)
    target = 5 * torch.randn(B, D)
    out = CIFDFeatureLoss(rdm_weights=[])(u, None, target)
    assert out["teacher"].item() == pytest.approx(sq_sum(u, unit(target)), rel=1e-5)


def _cifd_inputs(batch, num_rdms=3):
    g = torch.Generator().manual_seed(4)
    student = StudentOutputs(torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.tensor(5.0))
    rdms = [unit(torch.randn(B, D, generator=g)) for _ in range(num_rdms)]
    return student, Targets(batch["t_img"], batch["t_txt"], torch.tensor(100.0), rdms, rdms)


def test_cifd_method_sums_contrastive_and_both_modalities_feature_terms(batch):
    torch.manual_seed(0)
    method = CIFD(LossSettings(contrastive_weight=0.005, ibm=False), student_dim=D, teacher_dims=(D, D), num_rdms=3,
                  gather={})
    student, targets = _cifd_inputs(batch)
    out = method(student, targets)
    assert set(out) == {"contrastive", *[f"{m}_{t}" for m in ("image", "text")
                                         for t in ("teacher", "rdm1", "rdm2", "rdm3", "rate")]}
    u_img = method.project("image", student.image)  # no IBM: the decoder alone, no noise
    assert out["image_teacher"].item() == pytest.approx(sq_sum(u_img, batch["t_img"]), rel=1e-5)
    assert out["image_rate"].item() == 0.0
    logits = 5.0 * unit(student.image) @ unit(student.text).T
    labels = list(range(B))
    assert out["contrastive"].item() == pytest.approx(0.005 * (ce_rows(logits, labels) + ce_rows(logits.T, labels)) / 2,
                                                      rel=1e-5)


def test_kd_dropout_drops_whole_targets_reproducibly(batch):
    method = CIFD(LossSettings(kd_dropout=0.5), student_dim=D, teacher_dims=(D, D), num_rdms=3, gather={})
    student, targets = _cifd_inputs(batch)
    runs = []
    for s in range(20):
        torch.manual_seed(0)  # same IBM noise
        runs.append(method(student, targets, generator=torch.Generator().manual_seed(s)))
    names = ["teacher", "rdm1", "rdm2", "rdm3"]
    for out in runs:  # image and text share the draw, and the keys never change
        assert [out[f"image_{n}"].item() == 0 for n in names] == [out[f"text_{n}"].item() == 0 for n in names]
    dropped = sum(out[f"image_{n}"].item() == 0 for out in runs for n in names)
    assert 20 <= dropped <= 60  # about half of 80
    torch.manual_seed(0)
    again = method(student, targets, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(again[k], runs[3][k]) for k in again)
    assert kd_keep_mask(4, 0.0) == [True] * 4
    with pytest.raises(UserError):
        kd_keep_mask(4, 1.0)


def test_mismatched_widths_and_rdm_counts_are_one_sentence_errors():
    with pytest.raises(UserError, match="projection"):
        CIFDFeatureLoss(rdm_weights=[])(torch.randn(B, 5), None, torch.randn(B, 7))
    with pytest.raises(UserError, match="RDM targets"):
        CIFDFeatureLoss(rdm_weights=[1.0, 1.0])(torch.randn(B, D), None, torch.randn(B, D), [torch.randn(B, D)])


def test_distill_clip_loss_is_open_clips(batch):
    out = DistillClipLossTerms(distill_weight=2.0)(batch["img"], batch["txt"], 4.0, batch["t_img"], batch["t_txt"], 8.0)
    s, t = 4.0 * batch["img"] @ batch["txt"].T, 8.0 * batch["t_img"] @ batch["t_txt"].T
    expected = (soft_ce_rows(t, s) + soft_ce_rows(t.T, s.T)) / 2
    assert out["distill"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_fd_uses_the_callers_projection(batch):
    proj = torch.nn.Linear(2, D)
    s_img, s_txt = torch.randn(B, 2), torch.randn(B, 2)
    out = FeatureDistillationLoss(weight=2000)(s_img, s_txt, 3 * batch["t_img"], batch["t_txt"], proj, proj)
    p_img, p_txt = unit(proj(s_img)), unit(proj(s_txt))
    expected = (sq_sum(p_img, batch["t_img"]) + sq_sum(p_txt, batch["t_txt"])) / D
    assert out["fd"].item() == pytest.approx(2000 * expected, rel=1e-5)
    out["fd"].backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_icl_pairs_student_with_teacher_of_the_other_modality(batch):
    out = InteractiveContrastiveLoss()(batch["img"], batch["txt"], 10.0, batch["t_img"], batch["t_txt"])
    labels = list(range(B))
    expected = (ce_rows(10 * batch["img"] @ batch["t_txt"].T, labels)
                + ce_rows(10 * batch["txt"] @ batch["t_img"].T, labels)) / 2
    assert out["icl"].item() == pytest.approx(expected, rel=1e-5)


def test_crd_is_kl_between_contrastive_distributions(batch):
    out = ContrastiveRelationalLoss()(batch["img"], batch["txt"], 10.0, batch["t_img"], batch["t_txt"], 20.0)
    s, t = 10 * batch["img"] @ batch["txt"].T, 20 * batch["t_img"] @ batch["t_txt"].T
    assert out["crd"].item() == pytest.approx((kl_rows(t, s) + kl_rows(t.T, s.T)) / 2, rel=1e-5)
    same = ContrastiveRelationalLoss()(batch["img"], batch["txt"], 10.0, batch["img"], batch["txt"], 10.0)
    assert same["crd"].item() == pytest.approx(0.0, abs=1e-6)


def test_affinity_mimicking_is_cross_entropy_both_directions(batch):
    out = AffinityMimickingLoss()(batch["img"], batch["txt"], 10.0, batch["t_img"], batch["t_txt"], 20.0)
    s, t = 10 * batch["img"] @ batch["txt"].T, 20 * batch["t_img"] @ batch["t_txt"].T
    assert out["affinity"].item() == pytest.approx((soft_ce_rows(t, s) + soft_ce_rows(t.T, s.T)) / 2, rel=1e-5)


def test_cifd_classification_terms():
    g = torch.Generator().manual_seed(6)
    C, E = 5, 8
    s, t, y = torch.randn(B, C, generator=g), torch.randn(B, C, generator=g), torch.tensor([0, 1, 2, 4])
    rdm_logits = [torch.randn(B, C, generator=g) for _ in range(2)]
    u, u_t = torch.randn(B, E, generator=g), torch.randn(B, E, generator=g)
    u_rdm = [torch.randn(B, E, generator=g) for _ in range(2)]
    rate = torch.rand(B, generator=g) * 100
    loss = CIFDClassificationLoss(rdm_weights=[0.5, 2.0], embedding_weight=100, rate_weight=0.005, temperature=2.0,
                                  kd_dropout=0.0)
    out = loss(s, y, {"output": u, "rate": rate}, t, u_t, rdm_logits, u_rdm)
    assert out["ce"].item() == pytest.approx(ce_rows(s, y.tolist()), rel=1e-5)
    assert out["kd_teacher"].item() == pytest.approx(kl_rows(t, s, 2.0), rel=1e-5)
    assert out["kd_rdm2"].item() == pytest.approx(2.0 * kl_rows(rdm_logits[1], s, 2.0), rel=1e-5)
    assert out["emb_teacher"].item() == pytest.approx(100 * sq_sum(u, u_t) / E, rel=1e-5)
    assert out["emb_rdm1"].item() == pytest.approx(100 * 0.5 * sq_sum(u, u_rdm[0]) / E, rel=1e-5)
    assert out["rate"].item() == pytest.approx(0.005 * sum(rate.tolist()) / B, rel=1e-5)
    assert set(out) == set(loss.weights)
