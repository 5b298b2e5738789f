"""Students exported into the teacher's embedding space, and the cross-model task that measures them."""
from __future__ import annotations

import json
import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cifd_clip.cli import main
from cifd_clip.errors import UserError
from cifd_clip.evaluation.cross_model import cross_model_metrics
from cifd_clip.export.teacher_space import fit_map


@pytest.fixture(scope="module")
def runs(tiny_teacher_and_cache, demo_train_spec, tmp_path_factory):
    """The tiny teacher (width 128), its embedding cache, and a CIFD student (width 64) distilled from it."""
    from cifd_clip.core.rdm import RDMFamily

    shared, teacher = tiny_teacher_and_cache
    root = tmp_path_factory.mktemp("teacher_space")
    torch.manual_seed(0)
    RDMFamily.build({"image": 128, "text": 128}, [10.0], hidden_dim=32, bottleneck_dim=8).save(root / "rdm.pt")
    assert main(["distill", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--cache",
                 str(shared / "cache"), "--rdm", str(root / "rdm.pt"), "--batch-size", "8", "--workers", "0",
                 "--warmup", "2", "--logs", str(root), "--name", "cifd"]) == 0
    return {"root": root, "teacher": teacher, "cache": shared / "cache",
            "cifd": root / "cifd" / "checkpoints" / "epoch_1.pt"}


def _q_from_the_run(checkpoint) -> torch.Tensor:
    """Q as the distillation computes it: the run's own method module, rebuilt and loaded from the checkpoint."""
    import dataclasses

    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.clip_models import load_model, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    saved = ckpt["config"]
    settings = LossSettings(**{f.name: saved[f.name] for f in dataclasses.fields(LossSettings) if f.name in saved})
    settings.rdm_weights = []
    tower = load_model(str(checkpoint))
    distiller = Distiller.build(tower.model, settings, student_dim=64, teacher_dims=(128, 128))
    distiller.load_states(ckpt["state_dict"], ckpt["distill_state_dict"])
    with torch.no_grad():
        return distiller.method.decoders[0].weight().detach(), tower


def _inputs(tokenizer):
    images = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    return images, tokenizer(["a red circle", "two blue squares", "a green triangle at the top", "a cross"])


def test_the_ibm_map_is_folded_exactly_and_the_card_names_the_teacher(runs, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(runs["cifd"]), "--out", str(out), "--space", "teacher"]) == 0
    q, student = _q_from_the_run(runs["cifd"])
    assert q.shape == (128, 64) and torch.allclose(q.T @ q, torch.eye(64), atol=1e-5)
    exported, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    exported.eval()
    student.model.eval()
    images, tokens = _inputs(open_clip.get_tokenizer(f"local-dir:{out}"))
    with torch.no_grad():
        for got, w in ((exported.encode_image(images, normalize=True), student.model.encode_image(images)),
                       (exported.encode_text(tokens, normalize=True), student.model.encode_text(tokens))):
            assert got.shape[1] == 128
            assert (got - F.normalize(w, dim=-1) @ q.T).abs().max() < 1e-5  # = Q·w/‖w‖
    fingerprint = json.loads((runs["cache"] / "cache.json").read_text())["teacher_fingerprint"]
    card = (out / "README.md").read_text()
    assert "Embedding space: the teacher's" in card and fingerprint in card and "width 128" in card
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] == 128


def test_procrustes_and_least_squares_recover_a_known_map():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(400, 8, generator=generator)
    q, _ = torch.linalg.qr(torch.randn(12, 8, generator=generator))  # semi-orthogonal [12, 8]
    target = F.normalize(student, dim=-1) @ q.T
    assert torch.allclose(fit_map(student, target, "procrustes"), q, atol=1e-5)
    # least squares from normalised rows to normalised rows: the normal equations' M = TᵀS (SᵀS)⁻¹
    noisy = target + 0.3 * torch.randn(400, 12, generator=generator)
    s, t = F.normalize(student.double(), dim=-1), F.normalize(noisy.double(), dim=-1)
    expected = (t.T @ s @ torch.linalg.inv(s.T @ s)).float()
    assert torch.allclose(fit_map(student, noisy, "lstsq"), expected, atol=1e-5)
    with pytest.raises(UserError, match="at least 8 pairs"):
        fit_map(student[:5], target[:5], "procrustes")


def test_a_procrustes_map_is_fitted_on_cached_pairs_and_folded(runs, demo_train_spec, tmp_path, capsys):
    out = tmp_path / "procrustes"
    assert main(["export", "--checkpoint", str(runs["cifd"]), "--out", str(out), "--space", "teacher",
                 "--teacher-map", "procrustes", "--fit-samples", "40"]) == 0
    printed = capsys.readouterr().out
    assert "procrustes map, mean cosine" in printed and "on 80 fitted pairs" in printed
    mapping = torch.load(out / "teacher_space_map.pt", weights_only=True)
    q = mapping["matrix"]
    assert mapping["kind"] == "procrustes" and torch.allclose(q.T @ q, torch.eye(64), atol=1e-4)
    assert mapping["fit"]["mean_cosine"] > 0.0


def test_cross_model_metrics_match_a_hand_computation():
    # 3 images, one caption each; the teacher's index, and student queries in the same space
    t_img = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.2, 0, 1.0]]), dim=-1)
    t_txt = F.normalize(torch.tensor([[1.0, 0.1, 0], [0.1, 1.0, 0], [0, 0.1, 1.0]]), dim=-1)
    # student caption 0 points at image 1 (a miss at R@1, a hit at R@2); captions 1 and 2 hit
    s_txt = F.normalize(torch.tensor([[0.5, 1.0, 0], [0, 1.0, 0.1], [0, 0, 1.0]]), dim=-1)
    # student image 2 is nearest teacher caption 1 (a miss at R@1, a hit at R@2)
    s_img = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0.5]]), dim=-1)
    owners = torch.tensor([0, 1, 2])
    student = {"image": s_img, "text": s_txt, "text_to_image": owners, "order": []}
    teacher = {"image": t_img, "text": t_txt, "text_to_image": owners, "order": []}
    m = cross_model_metrics(student, teacher, "zeroshot_retrieval", recall_k=[1, 2])
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3)  # student text -> teacher image
    assert m["image_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)  # student image -> teacher text
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["teacher_image_retrieval_recall@1"] == 1.0 and m["teacher_text_retrieval_recall@1"] == 1.0
    assert m["recall_retained"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 1) / 4)
    # classification: the student's images against the teacher's classifier (2 classes); student image 2 is
    # labelled 0 but lies nearer class 1, teacher image 2 nearer class 0
    classifier = torch.tensor([[1.0, 0], [0, 1.0], [0, 0]])
    s = {"image": s_img, "targets": torch.tensor([0, 1, 0]), "classifier": classifier}
    t = {"image": t_img, "targets": torch.tensor([0, 1, 0]), "classifier": classifier}
    m = cross_model_metrics(s, t, "zeroshot_classification")
    assert m["acc1"] == pytest.approx(2 / 3) and m["teacher_acc1"] == 1.0
    assert m["acc1_retained"] == pytest.approx(2 / 3)


def test_a_model_against_its_own_index_scores_its_own_figures(runs, demo_data_dir, tmp_path):
    """The teacher's queries against the teacher's gallery: cross = teacher = student, read back from the file."""
    for task, root in (("cross_model_retrieval", "retrieval"), ("cross_model_classification", "zeroshot")):
        out = tmp_path / f"{task}.json"
        args = ["eval", "--model", str(runs["teacher"]), "--dataset", f"wds/{root}", "--dataset-root",
                str(demo_data_dir / root), "--task", task, "--workers", "0", "--batch-size", "16",
                "--gallery-embeddings", str(tmp_path / f"{root}.pt"), "--output", str(out)]
        assert main(args + ["--gallery-model", str(runs["teacher"])]) == 0
        metrics = json.loads(out.read_text())["metrics"]
        plain = [k for k in metrics if not k.startswith(("teacher_", "student_")) and "retained" not in k]
        assert plain and all(metrics[k] == metrics[f"teacher_{k}"] == metrics[f"student_{k}"] for k in plain)
        assert main(args) == 0  # the gallery file alone serves a second run
        assert json.loads(out.read_text())["metrics"] == metrics


def test_the_cifd_export_searches_the_teachers_index(runs, demo_data_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(runs["cifd"]), "--out", str(out), "--space", "teacher"]) == 0
    result = tmp_path / "cross.json"
    assert main(["eval", "--model", f"local-dir:{out}", "--dataset", "wds/retrieval", "--dataset-root",
                 str(demo_data_dir / "retrieval"), "--task", "cross_model_retrieval", "--workers", "0",
                 "--gallery-model", str(runs["teacher"]), "--output", str(result)]) == 0
    metrics = json.loads(result.read_text())["metrics"]
    assert {"image_retrieval_recall@1", "teacher_image_retrieval_recall@1", "student_text_retrieval_recall@10",
            "recall_retained"} <= set(metrics)


@pytest.mark.slow
def test_clip_benchmark_evaluates_the_teacher_space_export(runs, demo_data_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(runs["cifd"]), "--out", str(out), "--space", "teacher"]) == 0
    result = tmp_path / "cb.json"
    proc = subprocess.run(
        [sys.executable, "-m", "clip_benchmark.cli", "eval", "--model", f"local-dir:{out}", "--pretrained", "none",
         "--dataset", "wds/zeroshot", "--dataset_root", str(demo_data_dir / "zeroshot"), "--task",
         "zeroshot_classification", "--batch_size", "16", "--num_workers", "0", "--output", str(result)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.0 <= json.loads(result.read_text())["metrics"]["acc1"] <= 1.0


def _fake_run(tmp_path, config: dict, distill_state_dict: dict):
    from cifd_clip.engine.checkpoint import build_checkpoint, save_atomic
    from cifd_clip.clip_models import load_model

    tower = load_model("tiny-vit-student")
    path = tmp_path / "run" / "checkpoints" / "epoch_1.pt"
    save_atomic(build_checkpoint(epoch=1, step=1, name="r", model_name=tower.model_name, model_cfg=tower.model_cfg,
                                 preprocess_cfg=tower.preprocess_cfg, state_dict=tower.model.state_dict(),
                                 distill_state_dict=distill_state_dict, optimizer={}, scheduler={}, scaler=None,
                                 config=config), path)
    return path


@pytest.mark.parametrize("config, states, expected", [
    ({"loss": "contrastive"}, {}, "this run (--loss contrastive) has none"),
    ({"loss": "distill_clip"}, {}, "this run (--loss distill_clip) has none"),
    ({"loss": "cifd", "ibm_decoder": "separate"}, {}, "IBM decoder is 'separate', whose maps carry a bias"),
    ({"loss": "clipkd"}, {"method.proj_image.weight": torch.zeros(128, 64)}, "projections carry a bias"),
])
def test_runs_without_a_sound_learned_map_are_refused(tmp_path, capsys, config, states, expected):
    path = _fake_run(tmp_path, config, states)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out"), "--space", "teacher"]) == 1
    err = capsys.readouterr().err
    assert expected in err and "--teacher-map procrustes" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_student_space_export_takes_no_map_options(runs, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(runs["cifd"]), "--out", str(tmp_path / "o"), "--teacher-map",
                 "procrustes"]) == 2
    assert "pass --space teacher with them" in capsys.readouterr().err


def test_cross_model_refusals_are_one_sentence(runs, demo_data_dir, tmp_path, capsys):
    common = ["eval", "--dataset", "wds/zeroshot", "--dataset-root", str(demo_data_dir / "zeroshot"),
              "--workers", "0", "--output", str(tmp_path / "r.json")]
    assert main(common + ["--model", str(runs["cifd"]), "--task", "cross_model_classification"]) == 2
    assert "pass --gallery-model TEACHER" in capsys.readouterr().err
    assert main(common + ["--model", str(runs["cifd"]), "--gallery-model", str(runs["teacher"])]) == 2
    assert "belong to the cross-model tasks" in capsys.readouterr().err
    # a student still in its own 64-wide space against the teacher's 128-wide gallery
    assert main(common + ["--model", str(runs["cifd"]), "--task", "cross_model_classification",
                          "--gallery-model", str(runs["teacher"]), "--gallery-embeddings",
                          str(tmp_path / "g.pt")]) == 1
    assert "export the student into the teacher's space first" in capsys.readouterr().err
    # the gallery file of that set, read for another set
    assert main(["eval", "--dataset", "wds/retrieval", "--dataset-root", str(demo_data_dir / "retrieval"),
                 "--workers", "0", "--output", str(tmp_path / "r2.json"), "--model", str(runs["teacher"]),
                 "--task", "cross_model_retrieval", "--gallery-embeddings", str(tmp_path / "g.pt")]) == 1
    err = capsys.readouterr().err
    assert "were made on another set" in err and "Traceback" not in err
