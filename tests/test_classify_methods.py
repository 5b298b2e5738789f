"""The classification baselines added for the paper's comparison (WSLD, IPWD, IFD, MGD, CRD's memory banks, AT on
every stage, FT's paraphraser trained first): each loss against a hand computation, and each method from the CLI
end to end on the tiny shapes set of tests/test_classify.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cifd_clip.classify.settings import ClassifySettings
from test_classify import distill, last_terms, shapes  # noqa: F401  (the shapes fixture: data and a cnn4 teacher)

torch.set_num_threads(1)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- losses, against hand computations


def test_wsld_weights_each_samples_kd_by_the_ce_ratio():
    from cifd_clip.classify.losses import weighted_soft_label_kd

    # two samples with different teachers, so a weight applied to the wrong sample changes the result
    teacher = torch.tensor([[math.log(3), 0.0], [0.0, math.log(7)]])  # p_T = (3/4, 1/4) and (1/8, 7/8) at τ = 1
    student = torch.zeros(2, 2)  # uniform: CE_S = ln 2 whatever the label
    labels = torch.tensor([0, 0])  # CE_T = ln 4/3 and ln 8
    weights = [1 - math.exp(-math.log(2) / math.log(4 / 3)), 1 - math.exp(-math.log(2) / math.log(8))]
    kls = [_kl(_softmax([v / 2 for v in row]), [0.5, 0.5]) for row in teacher.tolist()]  # the teacher at τ = 2
    expected = 4 * (weights[0] * kls[0] + weights[1] * kls[1]) / 2
    assert kls[0] != pytest.approx(kls[1]) and weights[0] != pytest.approx(weights[1])
    assert weighted_soft_label_kd(teacher, student, labels, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_ipwd_weights_are_label_share_over_teacher_share_with_mean_one():
    from cifd_clip.classify.losses import inverse_propensity_kd, inverse_propensity_weights

    # the teacher puts 3/4 of its mass on class 0, the labels are balanced: raw weights 2/3 and 2, normalised
    # by their mean over the samples (4/3)
    weights = inverse_propensity_weights(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 2.0]))
    assert weights.tolist() == pytest.approx([0.5, 1.5])
    teacher, student = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 2)
    kls = [_kl(_softmax([1.0, 0.0]), [0.5, 0.5]), _kl(_softmax([0.0, 2.0]), [0.5, 0.5])]
    expected = (0.5 * kls[0] + 1.5 * kls[1]) / 2  # τ = 1
    assert inverse_propensity_kd(teacher, student, torch.tensor([0, 1]), weights, 1.0).item() == \
        pytest.approx(expected, rel=1e-5)


def test_ifd_compares_the_mean_of_the_projections_by_direction():
    from cifd_clip.classify.methods import StudentOut, Targets
    from cifd_clip.classify.methods.ifd import IFD

    method = IFD(ClassifySettings(loss="ifd", ifd_projectors=2, ce_weight=0.0), student_dim=2, teacher_dim=2)
    with torch.no_grad():  # projector 1 the identity, projector 2 swaps the dimensions
        method.projectors[0][0].weight.copy_(torch.eye(2))
        method.projectors[1][0].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        for projector in method.projectors:
            projector[0].bias.zero_()
    student = StudentOut(torch.tensor([[2.0, -1.0], [2.0, -1.0]]), torch.zeros(2, 3))
    # relu -> (2, 0) and (0, 2), mean (1, 1); against the teacher's (1, 0): cos = 1/√2, the same for both samples
    terms = method(student, Targets(torch.tensor([0, 0]), features=torch.tensor([[1.0, 0.0], [1.0, 0.0]])))
    assert terms["ifd"].item() == pytest.approx(25 * (1 - 1 / math.sqrt(2)), rel=1e-5)


@pytest.mark.parametrize("ratio, expected", [(0.0, 20.0), (0.999999, 25.0)])
def test_mgd_regenerates_the_masked_map_and_sums_the_squared_error(ratio, expected):
    from cifd_clip.classify.methods import StudentOut, Targets
    from cifd_clip.classify.methods.mgd import MGD

    settings = ClassifySettings(loss="mgd", mgd_mask_ratio=ratio, ce_weight=0.0, mgd_weight=1.0)
    method = MGD(settings, student_dim=2, teacher_dim=2, student_channels=2, teacher_channels=2)
    with torch.no_grad():  # both convs the identity: the generator is a ReLU
        for conv in (method.generator[0], method.generator[2]):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
    fmap = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    teacher = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    # nothing masked: relu(1, -2) = (1, 0) against (3, 4): 4 + 16; everything masked: 9 + 16 (per sample: two
    # copies give the same loss, the sum is divided by the batch)
    terms = method(StudentOut(torch.zeros(2, 2), torch.zeros(2, 3), fmap),
                   Targets(torch.tensor([0, 0]), feature_map=teacher), torch.Generator().manual_seed(0))
    assert terms["mgd"].item() == pytest.approx(expected)


def test_mgd_masks_come_from_the_generator():
    from cifd_clip.classify.losses import channel_keep_mask

    first = channel_keep_mask(64, 32, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(first, channel_keep_mask(64, 32, 0.5, torch.Generator().manual_seed(3)))
    assert first.shape == (64, 32) and 0.4 < 1 - first.mean().item() < 0.6  # about half the channels masked


def test_crd_nce_loss_in_closed_form():
    from cifd_clip.classify.losses import nce_contrast_loss

    # K = 2 negatives, N = 4 samples: the noise term K/N = 0.5
    expected = -(math.log(0.5 / 1.0) + math.log(0.5 / 0.6) + math.log(0.5 / 0.7))
    assert nce_contrast_loss(torch.tensor([[0.5, 0.1, 0.2]]), 4).item() == pytest.approx(expected, rel=1e-5)


def test_crd_memory_scores_against_the_other_bank_then_moves_the_entries():
    from cifd_clip.classify.methods.crd import ContrastMemory

    memory = ContrastMemory([0, 0, 1, 1], dim=2, nce_k=2, temperature=1.0, momentum=0.5)
    axes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    turned = torch.tensor([[0.6, 0.8], [-0.8, 0.6], [0.0, -1.0], [1.0, 0.0]])  # a different teacher bank
    memory.bank_student.copy_(axes)
    memory.bank_teacher.copy_(turned)
    contrast = memory.contrast_indices(torch.tensor([0, 2]), torch.Generator().manual_seed(0))
    assert contrast[:, 0].tolist() == [0, 2] and set(contrast[0, 1:].tolist()) <= {2, 3} \
        and set(contrast[1, 1:].tolist()) <= {0, 1}  # the negatives are of the other class
    student, teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = memory(student, teacher, torch.tensor([0, 2]), torch.Generator().manual_seed(0))

    def exp_dots(bank, rows, anchor):
        return [math.exp(sum(a * b for a, b in zip(bank[j].tolist(), anchor))) for j in rows]

    # the student anchored against the teacher's bank, the teacher against the student's
    student_side = [exp_dots(turned, row, s) for row, s in zip(contrast.tolist(), student.tolist())]
    teacher_side = [exp_dots(axes, row, t) for row, t in zip(contrast.tolist(), teacher.tolist())]
    z_student_scores = sum(map(sum, student_side)) / 6 * 4  # Z: the first batch's mean score × N
    z_teacher_scores = sum(map(sum, teacher_side)) / 6 * 4
    assert memory.normalizers.tolist() == pytest.approx([z_student_scores, z_teacher_scores], rel=1e-5)

    def nce(rows, z):
        total = 0.0
        for row in rows:
            pos, negs = row[0] / z, [v / z for v in row[1:]]
            total += math.log(pos / (pos + 0.5)) + sum(math.log(0.5 / (v + 0.5)) for v in negs)
        return -total / len(rows)

    expected = nce(student_side, z_student_scores) + nce(teacher_side, z_teacher_scores)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    moved = 0.5 * turned[0] + 0.5 * teacher[0]  # sample 0's teacher entry: normalize(m·old + (1 − m)·new)
    assert memory.bank_teacher[0].tolist() == pytest.approx((moved / moved.norm()).tolist())
    half = 1 / math.sqrt(2)
    assert memory.bank_student[2].tolist() == pytest.approx([-half, half])
    assert memory.bank_student[1].tolist() == [0.0, 1.0]  # not in the batch: untouched
    assert memory.bank_teacher[1].tolist() == pytest.approx([-0.8, 0.6])


def test_attention_transfer_sums_the_stages_and_pools_the_larger_map():
    from cifd_clip.classify.losses import attention_transfer_stages

    one_hot = torch.zeros(1, 3, 2, 2)
    one_hot[0, :, 0, 0] = 1.0
    # a = (.5, .5, .5, .5) against (1, 0, 0, 0): ((.5 - 1)² + 3·.25) / 4 = 0.25 per stage
    student = [torch.ones(1, 2, 2, 2), torch.ones(1, 1, 4, 4)]  # the second is pooled to 2x2
    teacher = [torch.randn(1, 5, 8, 8), one_hot, one_hot[:, :1]]  # one more stage: its first is left out
    assert attention_transfer_stages(student, teacher).item() == pytest.approx(0.5, rel=1e-5)
    small, large = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4)
    small[..., 0, 0], large[..., :2, :2] = 1.0, 1.0  # the teacher's map pooled to 2x2 equals the student's
    assert attention_transfer_stages([small], [large]).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name, stages", [("resnet20", 3), ("wrn_16_2", 3), ("vgg8", 4), ("cnn2", 2)])
def test_stage_maps_end_with_the_feature_map(name, stages):
    from cifd_clip.classify.zoo import build_classifier

    net = build_classifier(name, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, features, logits = net.forward_with_stages(x)
        assert len(maps) == stages and torch.equal(maps[-1], net.feature_map(x))
        assert torch.equal(logits, net(x)[1])


# ---------------------------------------------------------------- from the CLI, end to end


def _checkpoint(shapes, name) -> dict:
    return torch.load(shapes["root"] / "runs" / name / "checkpoints" / "epoch_1.pt", weights_only=True)


@pytest.mark.parametrize("loss, extra, term", [
    ("wsld", [], "wsld"), ("ifd", [], "ifd"), ("mgd", [], "mgd"), ("mgd", ["--mgd-level", "embedding"], "mgd"),
    ("at", [], "at"), ("at", ["--at-stages", "last"], "at")])
def test_the_new_methods_run_from_the_cli(shapes, loss, extra, term):
    name = f"{loss}{''.join(extra[1:])}"
    assert distill(shapes, name, "--loss", loss, "--teacher", shapes["teacher"], *extra) == 0
    assert {"ce", term} <= set(last_terms(shapes, name))


def test_ipwd_estimates_its_class_weights_before_training(shapes):
    from cifd_clip.classify.data import open_set

    assert distill(shapes, "ipwd", "--loss", "ipwd", "--teacher", shapes["teacher"]) == 0
    assert {"ce", "ipwd"} <= set(last_terms(shapes, "ipwd"))
    weights = _checkpoint(shapes, "ipwd")["distill_state_dict"]["method.class_weights"]
    labels = torch.as_tensor(open_set(shapes["data"], "train").labels)
    assert not torch.allclose(weights, torch.ones_like(weights))  # the cnn4 teacher is far from balanced
    assert weights[labels].mean().item() == pytest.approx(1.0, rel=1e-4)


def test_crd_memory_banks_are_checkpointed_and_resumed_exactly(shapes):
    common = ["--loss", "crd", "--teacher", shapes["teacher"], "--crd-negatives", "memory", "--epochs", "2"]
    assert distill(shapes, "crd-full", *common) == 0
    assert distill(shapes, "crd-cut", *common, "--stop-after-steps", "7") == 0
    assert distill(shapes, "crd-cut", *common, "--resume", "latest") == 0
    full, cut = ({**ckpt["state_dict"], **ckpt["distill_state_dict"]} for ckpt in (
        torch.load(shapes["root"] / "runs" / run / "checkpoints" / "epoch_2.pt", weights_only=True)
        for run in ("crd-full", "crd-cut")))
    assert full["method.memory.bank_student"].shape == (96, 128) and full["method.memory.normalizers"].min() > 0
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)


def test_ft_trains_the_paraphraser_first_then_freezes_it(shapes):
    assert distill(shapes, "ft2", "--loss", "ft", "--teacher", shapes["teacher"], "--ft-paraphraser-epochs", "2") == 0
    phase = shapes["root"] / "runs" / "ft2" / "paraphraser"
    assert json.loads((phase / "summary.json").read_text())["steps"] == 2 * 6  # 96 samples in batches of 16
    terms = last_terms(shapes, "ft2")
    assert {"ce", "ft"} <= set(terms) and "ft_paraphraser" not in terms
    trained = torch.load(phase / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    student_run = _checkpoint(shapes, "ft2")["distill_state_dict"]
    assert all(torch.equal(student_run[f"method.{k}"], v) for k, v in trained.items())  # frozen since
