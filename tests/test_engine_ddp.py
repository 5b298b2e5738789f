"""Two gloo processes under torchrun and one process give the same gradients for the same global batch.

Run by pytest; torchrun also runs this file as a script (the worker below).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GLOBAL_BATCH = 8
LOSSES = ("contrastive", "cifd", "cifd_ibm", "clipkd", "classification_cifd")


def _global_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(GLOBAL_BATCH, 3, 48, 48, generator=g),
            "text": torch.randint(1, 49000, (GLOBAL_BATCH, 24), generator=g),
            "t_image_emb": torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, 128, generator=g), dim=-1),
            "t_text_emb": torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, 128, generator=g), dim=-1)}


def classification_gradients(env) -> dict:
    """The classification path: a cnn2 student distilled with CIFD (teacher + RDMs + IBM) from a cnn4 teacher."""
    from cifd_clip.classify.distiller import ClassifierDistiller, FrozenClassifier
    from cifd_clip.classify.settings import ClassifySettings
    from cifd_clip.classify.zoo import build_classifier
    from cifd_clip.engine.loop import wrap_ddp
    from cifd_clip.core.rdm import RDMFamily

    torch.manual_seed(0)
    student, teacher = build_classifier("cnn2", 10), FrozenClassifier(build_classifier("cnn4", 10))
    rdm = RDMFamily.build({"image": 306}, [1.0, 0.6], num_classes=10, hidden_dim=16, bottleneck_dim=4,
                          normalize_input=False)
    module = ClassifierDistiller.build(student, ClassifySettings(loss="cifd"), teacher=teacher, rdm=rdm)
    module.student.eval()  # batch norm from running statistics: a per-process batch must not change them
    module.method.ibm.eval()  # no noise, so that 1 and 2 processes draw the same
    g = torch.Generator().manual_seed(2)
    full = {"image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), "label": torch.arange(GLOBAL_BATCH) % 10}
    share = GLOBAL_BATCH // env.world_size
    batch = {k: v[env.rank * share:(env.rank + 1) * share] for k, v in full.items()}
    model = wrap_ddp(module, env)
    module.begin_step(0)
    sum(model(batch).values()).backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def crd_memory_banks(env) -> dict:
    """CRD's memory banks after one DDP step on the global batch, each rank training on its share: every rank's
    updates must reach every rank's banks."""
    from cifd_clip.classify.distiller import ClassifierDistiller, FrozenClassifier
    from cifd_clip.classify.settings import ClassifySettings
    from cifd_clip.classify.zoo import build_classifier
    from cifd_clip.engine.loop import wrap_ddp

    torch.manual_seed(0)
    student, teacher = build_classifier("cnn2", 4), FrozenClassifier(build_classifier("cnn4", 4))
    settings = ClassifySettings(loss="crd", crd_negatives="memory", crd_nce_k=4)
    module = ClassifierDistiller.build(student, settings, teacher=teacher, train_labels=torch.arange(16) % 4)
    module.student.eval()
    g = torch.Generator().manual_seed(3)
    full = {"image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), "index": torch.randperm(16, generator=g)[:8]}
    full["label"] = full["index"] % 4
    share = GLOBAL_BATCH // env.world_size
    batch = {k: v[env.rank * share:(env.rank + 1) * share] for k, v in full.items()}
    model = wrap_ddp(module, env)
    module.begin_step(0)
    sum(model(batch).values()).backward()
    return {k: v.clone() for k, v in module.method.memory.state_dict().items()}


def gradients(loss: str, env) -> dict:
    """Gradients of every trainable parameter after one DDP backward pass on this rank's share."""
    if loss == "classification_cifd":
        return classification_gradients(env)
    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.engine.loop import wrap_ddp
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.clip_models import load_model

    torch.manual_seed(0)
    student = load_model("tiny-vit-student").model
    with_ibm = loss == "cifd_ibm"
    loss = "cifd" if with_ibm else loss
    rdm = RDMFamily.build({"image": 128, "text": 128}, [10.0, 100.0], hidden_dim=32, bottleneck_dim=8) \
        if loss == "cifd" else None
    settings = LossSettings(loss=loss, ibm=with_ibm) if loss == "cifd" else LossSettings(loss=loss)
    module = Distiller.build(student, settings, student_dim=64,
                             teacher_dims=None if loss == "contrastive" else (128, 128), rdm=rdm,
                             gather_with_grad=True, rank=env.rank, world_size=env.world_size)
    if with_ibm:  # no IBM noise, so that 1 and 2 processes draw the same; the rate still has gradients
        module.method.ibm_image.eval()
        module.method.ibm_text.eval()
    share = GLOBAL_BATCH // env.world_size
    batch = {k: v[env.rank * share:(env.rank + 1) * share] for k, v in _global_batch().items()}
    model = wrap_ddp(module, env)
    sum(model(batch).values()).backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _worker(out_dir: str) -> None:
    from cifd_clip.engine.distributed import cleanup, init_distributed
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    assert env.world_size == 2 and env.backend == "gloo"
    result = {loss: gradients(loss, env) for loss in LOSSES}
    if env.is_main:
        torch.save(result, Path(out_dir) / "ddp_grads.pt")
    torch.save(crd_memory_banks(env), Path(out_dir) / f"crd_banks_rank{env.rank}.pt")
    cleanup(env)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    from cifd_clip.engine.distributed import init_distributed
    env = init_distributed("cpu")
    single = {loss: gradients(loss, env) for loss in LOSSES}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           __file__, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    for loss in LOSSES:
        assert ddp[loss].keys() == single[loss].keys(), loss
        for name, grad in single[loss].items():
            # float32 sums in another order (two ranks' shares, then the all-reduce) differ by a few ulps of the
            # largest terms summed: the tolerance scales with the gradient's magnitude (one element of a
            # token-embedding gradient of magnitude 6.7 differed by 3.8e-6 on one machine)
            atol = 1e-6 * max(1.0, float(grad.abs().max()))
            torch.testing.assert_close(ddp[loss][name], grad, rtol=1e-4, atol=atol, msg=f"{loss}: {name}")
    # CRD's banks: both ranks hold the same banks, those of one process on the whole batch (the normalisers
    # depend on the negatives each rank draws, so they agree between the ranks only)
    single_banks = crd_memory_banks(env)
    ranks = [torch.load(tmp_path / f"crd_banks_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["normalizers"], ranks[1]["normalizers"])
    for name in ("bank_student", "bank_teacher"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], single_banks[name], rtol=1e-4, atol=1e-6, msg=name)


if __name__ == "__main__":
    from cifd_clip.engine.distributed import end_process
    _worker(sys.argv[1])
    end_process(0)  # as the cifd-clip command ends (see end_process)
