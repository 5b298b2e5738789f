"""cifd-clip distill: cached and online teacher targets agree; outputs and compatibility checks."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from cifd_clip.cli import main


@pytest.fixture(scope="module")
def teacher_and_cache(tiny_teacher_and_cache):
    """A briefly trained tiny teacher checkpoint, its float32 embedding cache and an RDM family file."""
    from cifd_clip.core.rdm import RDMFamily
    root, teacher = tiny_teacher_and_cache
    torch.manual_seed(0)
    RDMFamily.build({"image": 128, "text": 128}, [10.0, 100.0], hidden_dim=32, bottleneck_dim=8).save(root / "rdm.pt")
    RDMFamily.build({"image": 96, "text": 96}, [10.0], hidden_dim=32, bottleneck_dim=8).save(root / "rdm96.pt")
    return root, teacher


def test_cached_and_online_targets_give_the_same_loss(teacher_and_cache, demo_train_spec):
    from cifd_clip.data.embedding_cache import CacheJoin
    from cifd_clip.data.loader import make_train_loader
    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.clip_models import load_model, load_teacher

    root, teacher_file = teacher_and_cache
    teacher = load_teacher(str(teacher_file))
    student = load_model("tiny-vit-student")
    data = make_train_loader(demo_train_spec, preprocess=student.preprocess_val, tokenizer=student.tokenizer,
                             batch_size=8, workers=0, seed=0, teacher_preprocess=teacher.preprocess,
                             teacher_tokenizer=teacher.tokenizer, sample_stages=[CacheJoin(root / "cache")])
    batch = next(iter(data.iterate(0)))
    rdm = RDMFamily.load(root / "rdm.pt")
    torch.manual_seed(0)
    cached = Distiller.build(student.model, LossSettings(), student_dim=64, teacher_dims=(128, 128), rdm=rdm)
    online = Distiller.build(copy.deepcopy(student.model), LossSettings(), student_dim=64, teacher_dims=(128, 128),
                             rdm=rdm, teacher=teacher)
    online.load_states(cached.student_state_dict(), cached.distill_state_dict())
    results = []
    for module in (cached, online):
        module.train()
        module.begin_step(0)
        torch.manual_seed(7)  # same IBM noise
        results.append({k: float(v) for k, v in module(batch).items()})
    assert results[0].keys() == results[1].keys()
    assert {"contrastive", "image_teacher", "image_rdm1", "image_rdm2", "image_rate", "text_teacher"} <= set(results[0])
    for k in results[0]:
        assert results[0][k] == pytest.approx(results[1][k], rel=1e-4, abs=1e-6), k
    # the online teacher is not part of what DDP syncs or what is checkpointed
    assert not any(k.startswith(("teacher", "_frozen")) for k in online.state_dict())
    assert sum(p.numel() for p in online.parameters()) == sum(p.numel() for p in cached.parameters())


def test_distill_run_writes_all_terms_and_a_loadable_student(teacher_and_cache, demo_train_spec, tmp_path):
    import open_clip
    root, _ = teacher_and_cache
    assert main(["distill", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--cache",
                 str(root / "cache"), "--rdm", str(root / "rdm.pt"), "--batch-size", "8", "--workers", "0",
                 "--warmup", "2", "--logs", str(tmp_path), "--name", "d"]) == 0
    run = tmp_path / "d"
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for term in ("contrastive", "image_teacher", "image_rdm1", "image_rdm2", "image_rate", "text_teacher",
                 "text_rdm1", "text_rdm2", "text_rate"):
        assert term in last
    ckpt = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert any(k.startswith("method.ibm_image.") for k in ckpt["distill_state_dict"])
    open_clip.create_model_and_transforms("tiny-vit-student", pretrained=str(run / "checkpoints" / "epoch_1.pt"))


def test_cached_affinity_targets_use_the_teachers_own_logit_scale(teacher_and_cache, demo_train_spec):
    """The cache records exp(teacher logit scale); the KD baseline from the cache equals the online teacher's."""
    from cifd_clip.commands.distill import Config
    from cifd_clip.config import parse
    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.inputs import build_distill_loader
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.data.embedding_cache import read_cache_meta
    from cifd_clip.engine.distributed import init_distributed
    from cifd_clip.clip_models import load_model, load_teacher

    root, teacher_file = teacher_and_cache
    teacher = load_teacher(str(teacher_file))
    scale = float(teacher.model.logit_scale.exp())
    assert read_cache_meta(root / "cache")["teacher_logit_scale"] == pytest.approx(scale)
    assert abs(scale - 100.0) > 1.0  # the trained teacher's scale is not the old fixed 100
    student = load_model("tiny-vit-student")

    cfg = parse(Config, ["--train-data", demo_train_spec, "--model", "tiny-vit-student", "--cache", str(root / "cache"),
                         "--batch-size", "8", "--workers", "0"])
    data = build_distill_loader(cfg, student, init_distributed("cpu"), teacher=teacher)
    data.dataset.sample_stages = build_distill_loader(cfg, student, init_distributed("cpu")).dataset.sample_stages
    batch = next(iter(data.iterate(0)))  # both the cached targets and the online teacher's inputs
    settings = LossSettings(loss="distill_clip")
    cached = Distiller.build(student.model, settings, student_dim=64, teacher_dims=(128, 128),
                             teacher_logit_scale=read_cache_meta(root / "cache")["teacher_logit_scale"])
    online = Distiller.build(student.model, settings, student_dim=64, teacher_dims=(128, 128), teacher=teacher)
    a, b = cached(batch), online(batch)
    assert float(a["distill"]) == pytest.approx(float(b["distill"]), rel=1e-3)


def test_online_teacher_run_and_baseline_losses(teacher_and_cache, demo_train_spec, tmp_path):
    root, teacher = teacher_and_cache
    common = ["--model", "tiny-vit-student", "--train-data", demo_train_spec, "--batch-size", "8", "--workers", "0",
              "--warmup", "2", "--logs", str(tmp_path), "--train-num-samples", "16"]
    assert main(["distill", *common, "--name", "online", "--teacher", str(teacher), "--teacher-online",
                 "--rdm", str(root / "rdm.pt")]) == 0
    for loss, term in (("distill_clip", "distill"), ("clipkd", "crd"), ("tinyclip", "affinity")):
        assert main(["distill", *common, "--name", loss, "--cache", str(root / "cache"), "--loss", loss]) == 0
        assert term in json.loads((tmp_path / loss / "metrics.jsonl").read_text().splitlines()[-1])


def test_rdm_of_another_width_than_the_cache_is_refused(teacher_and_cache, demo_train_spec, tmp_path, capsys):
    root, _ = teacher_and_cache
    code = main(["distill", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--cache",
                 str(root / "cache"), "--rdm", str(root / "rdm96.pt"), "--logs", str(tmp_path), "--workers", "0"])
    assert code == 1
    assert "image dim" in capsys.readouterr().err


def test_distill_without_targets_is_a_config_error(demo_train_spec, tmp_path, capsys):
    assert main(["distill", "--model", "tiny-vit-student", "--train-data", demo_train_spec,
                 "--logs", str(tmp_path)]) == 2
    assert "--cache" in capsys.readouterr().err


def test_online_teacher_with_the_students_inputs_reads_the_students_batch(demo_train_spec):
    """A teacher whose eval preprocess and tokenizer equal the student's gets no tensors of its own in the batch
    (one preprocess and tokenization per sample, as open_clip_train's --distill-model) and the same targets."""
    from cifd_clip.commands.distill import Config
    from cifd_clip.config import parse
    from cifd_clip.data.loader import make_train_loader
    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.inputs import build_distill_loader
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.engine.distributed import init_distributed
    from cifd_clip.clip_models import load_model, load_teacher, same_inputs

    student, teacher = load_model("tiny-rn-student"), load_teacher("tiny-rn-teacher")
    assert same_inputs(student, teacher.tower)
    assert not same_inputs(load_model("tiny-vit-student"), load_teacher("tiny-vit-teacher").tower)  # 48 vs 64 px
    cfg = parse(Config, ["--train-data", demo_train_spec, "--model", "tiny-rn-student", "--teacher", "tiny-rn-teacher",
                         "--teacher-online", "--batch-size", "8", "--workers", "0"])
    shared = next(iter(build_distill_loader(cfg, student, init_distributed("cpu"), teacher=teacher).iterate(0)))
    assert "teacher_image" not in shared and "teacher_text" not in shared
    own = next(iter(make_train_loader(demo_train_spec, preprocess=student.preprocess_val, tokenizer=student.tokenizer,
                                      batch_size=8, workers=0, seed=cfg.seed, teacher_preprocess=teacher.preprocess,
                                      teacher_tokenizer=teacher.tokenizer).iterate(0)))
    assert torch.equal(own["teacher_image"], shared["image"]) and torch.equal(own["teacher_text"], shared["text"])
    module = Distiller.build(student.model, LossSettings(loss="distill_clip"), student_dim=64, teacher_dims=(96, 96),
                             teacher=teacher)
    a, b = module.targets(shared, "cpu"), module.targets(own, "cpu")
    assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text)
