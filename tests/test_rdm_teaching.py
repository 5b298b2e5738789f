"""How the RDMs teach (`--rdm-teaching`): the paper's form collapses to one mean target (checked on the gradient,
so the docs' claim is tested), and each other form is seen to break that collapse."""
from __future__ import annotations

import pytest
import torch

from cifd_clip.core.losses import CIFDClassificationLoss, CIFDFeatureLoss
from cifd_clip.core.rdm_teaching import CURRICULUM_TEACHER_ONLY, FORMS, curriculum_scale

B, D, N = 6, 5, 3


def _targets(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1) for _ in range(N + 1)]


def _grad(loss_fn, prediction):
    u = prediction.clone().requires_grad_(True)
    sum(loss_fn(u).values()).backward()
    return u.grad


def test_the_papers_form_is_the_mean_target_at_n_plus_one_times_the_weight():
    teacher, *rdms = _targets()
    u = torch.randn(B, D, generator=torch.Generator().manual_seed(3))
    cifd = CIFDFeatureLoss(1.0, [1.0] * N, 0.0, normalize_targets=False)
    mean = torch.stack([teacher, *rdms]).mean(0)
    single = CIFDFeatureLoss(N + 1.0, [], 0.0, normalize_targets=False)
    torch.testing.assert_close(_grad(lambda x: cifd(x, None, teacher, rdms), u),
                               _grad(lambda x: single(x, None, mean, []), u))
    # the KD terms collapse the same way: a KL is linear in its target distribution
    logits = torch.randn(B, 7, generator=torch.Generator().manual_seed(4))
    t_logits = [torch.randn(B, 7, generator=torch.Generator().manual_seed(10 + k)) for k in range(N + 1)]
    loss = CIFDClassificationLoss([1.0] * N, embedding_weight=0.0, rate_weight=0.0, kd_dropout=0.0)
    grad = _grad(lambda x: {k: v for k, v in loss(x, torch.zeros(B, dtype=torch.long), {"output": u}, t_logits[0],
                                                   teacher, t_logits[1:], rdms).items() if k != "ce"}, logits)
    mean_p = torch.stack([(t / 2).softmax(-1) for t in t_logits]).mean(0)
    x = logits.clone().requires_grad_(True)
    ((N + 1) * 4 * -(mean_p * (x / 2).log_softmax(-1)).sum(-1).mean()).backward()  # τ² · soft CE at τ = 2
    torch.testing.assert_close(grad, x.grad)


def test_heads_and_the_curriculum_break_the_collapse():
    teacher, *rdms = _targets()
    u = torch.randn(B, D, generator=torch.Generator().manual_seed(3))
    cifd = CIFDFeatureLoss(1.0, [1.0] * N, 0.0, normalize_targets=False)
    collapsed = _grad(lambda x: cifd(x, None, teacher, rdms), u)
    # one prediction per target: each target pulls its own head's output only
    per_target = torch.stack([u + 0.1 * k for k in range(N + 1)])
    g = _grad(lambda x: cifd(x, None, teacher, rdms), per_target)
    for k, target in enumerate([teacher, *rdms]):
        torch.testing.assert_close(g[k], 2 * (per_target[k] - target) / B)
    # the curriculum: early on the lowest-rate RDM alone, at the same total weight
    early = _grad(lambda x: cifd(x, None, teacher, rdms, scale=curriculum_scale(N, 0.0)), u)
    torch.testing.assert_close(early, (N + 1) * 2 * (u - rdms[0]) / B)
    assert not torch.allclose(early, collapsed)


def test_the_curriculum_walks_from_the_weakest_rdm_to_the_teacher_at_a_constant_total():
    assert curriculum_scale(3, 0.0) == [0.0, 4.0, 0.0, 0.0]  # teacher first, then the RDMs in rate order
    assert curriculum_scale(3, (1 - CURRICULUM_TEACHER_ONLY) / 3) == pytest.approx([0.0, 0.0, 4.0, 0.0])
    assert curriculum_scale(3, 1 - CURRICULUM_TEACHER_ONLY) == [4.0, 0.0, 0.0, 0.0]
    assert curriculum_scale(3, 1.0) == [4.0, 0.0, 0.0, 0.0]
    for p in torch.linspace(0, 1, 41).tolist():
        scale = curriculum_scale(3, p)
        assert sum(scale) == pytest.approx(4.0) and sum(s > 0 for s in scale) <= 2
    assert curriculum_scale(0, 0.3) == [1.0]


def test_stochastic_teaching_draws_a_fresh_code_per_step_reproducibly():
    from cifd_clip.core.rdm import RDMFamily

    family = RDMFamily.build({"image": 8}, [1.0, 10.0], meta={})
    family.eval()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    rounded = family.teach("image", x)
    draw = lambda step: family.teach("image", x, torch.Generator().manual_seed(step))  # noqa: E731
    first, again, other = draw(1), draw(1), draw(2)
    for a, b, c, r in zip(first, again, other, rounded):
        torch.testing.assert_close(a, b)  # the same (seed, step) gives the same code
        assert not torch.allclose(a, c) and not torch.allclose(a, r)
    # the stacked fast path and one RDM after another draw from the same distribution: both centre on Y
    each = family.teach_each("image", x, torch.Generator().manual_seed(1))
    assert [t.shape for t in each] == [t.shape for t in first]


def test_every_form_is_an_option_of_both_paths_and_refused_elsewhere():
    from cifd_clip.classify.settings import ClassifySettings
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.errors import ConfigError

    for form in FORMS:
        LossSettings(rdm_teaching=form).validate()
        ClassifySettings(rdm_teaching=form).validate()
    with pytest.raises(ConfigError, match="--rdm-teaching is not used by --loss distill_clip"):
        LossSettings(loss="distill_clip", rdm_teaching="heads").validate()
    with pytest.raises(ConfigError, match="rdm-teaching"):
        ClassifySettings(loss="kd", rdm_teaching="curriculum").validate()


def test_heads_give_each_rdm_its_own_head_on_both_paths():
    from cifd_clip.classify.methods import StudentOut, Targets as ClsTargets
    from cifd_clip.classify.methods.cifd import CIFD as ClsCIFD
    from cifd_clip.classify.settings import ClassifySettings
    from cifd_clip.distill.methods import CIFD, StudentOutputs, Targets
    from cifd_clip.distill.settings import LossSettings

    method = ClsCIFD(ClassifySettings(rdm_teaching="heads", kd_dropout=0.0), student_dim=4, teacher_dim=D, num_rdms=N)
    assert len(method.rdm_heads) == N
    g = torch.Generator().manual_seed(0)
    teacher, *rdms = _targets()
    out = method(StudentOut(torch.randn(B, 4, generator=g), torch.randn(B, 7, generator=g)),
                 ClsTargets(torch.zeros(B, dtype=torch.long), teacher, torch.randn(B, 7, generator=g),
                            rdm_features=rdms, rdm_logits=[torch.randn(B, 7, generator=g) for _ in rdms]))
    sum(out.values()).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in method.rdm_heads)

    clip = CIFD(LossSettings(rdm_teaching="heads"), student_dim=4, teacher_dims=(D, D), num_rdms=N, gather={})
    assert len(clip.rdm_heads) == N
    student = StudentOutputs(torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g), torch.tensor(10.0))
    out = clip(student, Targets(teacher, teacher, torch.tensor(10.0), rdms, rdms))
    assert {"image_rdm1", "text_rdm3", "image_teacher"} <= set(out)
    sum(out.values()).backward()
    assert all(p.grad is not None for p in clip.rdm_heads.parameters())
