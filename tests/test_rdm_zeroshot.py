"""Zero-shot accuracy of RDM reconstructions: `embed --zeroshot-root` writes the teacher side once,
`train-rdm` pairs each RDM's reconstruction with the teacher's other modality (never loading the teacher)."""
import json

import numpy as np
import pytest
import torch

from cifd_clip import cli
from cifd_clip.evaluation import cached_zeroshot
from test_train_rdm import D_IMG, LATENT, cli as train_rdm_cli, write_cache

# ---------------------------------------------------------------- embed: the teacher side, real tiny teacher


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    from cifd_clip.clip_models import load_teacher

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("zs_teacher") / "teacher.pt"
    torch.save(load_teacher("tiny-vit-teacher").model.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_embed_zeroshot_root_writes_the_teacher_side_that_the_evaluator_agrees_with(
        tmp_path, demo_data_dir, demo_train_spec, teacher_weights, capsys):
    from cifd_clip.evaluation.datasets import build_dataset, make_loader
    from cifd_clip.evaluation.runner import evaluate_model_on_dataset
    from cifd_clip.evaluation.zeroshot import build_classifier
    from cifd_clip.clip_models import load_model

    out, root = tmp_path / "cache", demo_data_dir / "zeroshot"
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--teacher-pretrained", teacher_weights, "--train-data",
            demo_train_spec, "--out", str(out), "--batch-size", "16", "--workers", "0", "--threads", "1",
            "--zeroshot-root", str(root)]
    assert cli.main(argv) == 0
    assert "72 images, 36 classes x 7 templates" in capsys.readouterr().out
    payload = cached_zeroshot.read_zeroshot_eval(out / cached_zeroshot.FILE_NAME)
    meta = json.loads((out / "cache.json").read_text())
    assert payload["teacher_fingerprint"] == meta["teacher_fingerprint"]
    assert payload["image_emb"].shape == (72, 128) and payload["image_emb"].dtype == torch.float16
    assert payload["text_emb"].shape == (36, 7, 128) and payload["labels"].shape == (72,)
    assert payload["templates"][0] == "a photo of a {c}." and payload["classnames"][0] == "red circle"
    assert torch.allclose(payload["image_emb"].float().norm(dim=-1), torch.ones(72), atol=2e-3)  # normalised
    assert not list(out.glob("*.tmp-*"))

    # the same teacher through cifd_clip's own zero-shot evaluator (open_clip's classifier builder)
    tower = load_model("tiny-vit-teacher", teacher_weights)
    tower.model.eval().requires_grad_(False)
    reference = evaluate_model_on_dataset(tower, "wds/zeroshot", root, "zeroshot_classification", batch_size=16,
                                          workers=0, show_progress=False)["metrics"]
    ours = cached_zeroshot.zeroshot_metrics(payload)
    assert abs(ours["zeroshot_acc1"] - reference["acc1"]) <= 1 / 72 + 1e-9  # float16 may flip one near-tie
    assert abs(ours["zeroshot_acc5"] - reference["acc5"]) <= 1 / 72 + 1e-9
    # ... and the stored embeddings are that teacher's, image by image and class by class
    data, info = build_dataset("wds/zeroshot", root, tower.preprocess_val)
    images, labels = zip(*[(tower.model.encode_image(x, normalize=True), y) for x, y in make_loader(data, info, 16, 0)])
    assert torch.equal(torch.cat(labels), payload["labels"])
    assert torch.allclose(torch.cat(images), payload["image_emb"].float(), atol=2e-3)
    classifier = build_classifier(tower.model, tower.tokenizer, payload["classnames"], payload["templates"], "cpu")
    assert torch.allclose(cached_zeroshot.classifier_from_prompts(payload["text_emb"]), classifier, atol=2e-3)

    # a second run with the same teacher and set keeps the file
    stamp = (out / cached_zeroshot.FILE_NAME).stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert "zeroshot_eval.pt was already complete" in capsys.readouterr().out
    assert (out / cached_zeroshot.FILE_NAME).stat().st_mtime_ns == stamp


def test_embed_refuses_a_retrieval_set_as_zeroshot_root(tmp_path, demo_data_dir, demo_train_spec, teacher_weights,
                                                         capsys):
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--teacher-pretrained", teacher_weights, "--train-data",
            demo_train_spec, "--out", str(tmp_path / "c"), "--workers", "0", "--zeroshot-root",
            str(demo_data_dir / "retrieval")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "retrieval set" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "cache.json").exists()  # refused before embedding anything


# ---------------------------------------------------------------- train-rdm: the RDM side, synthetic teacher

CLASSES, TEMPLATES, PER_CLASS = 8, 3, 12


def synthetic_zeroshot(fingerprint="f00d", seed=5):
    """A zero-shot set in the same latent space as test_train_rdm's caches: class latents drawn like the
    cache's, images and prompts noisy views of their class's latent (so the 'teacher' classifies well)."""
    basis = np.random.default_rng(99).normal(size=(LATENT, D_IMG))  # write_cache's map to embeddings
    rng = np.random.default_rng(seed)
    scale = np.linspace(2.0, 0.5, LATENT)
    centres = rng.normal(size=(CLASSES, LATENT)) * scale

    def embed(z):
        x = torch.tensor(z @ basis, dtype=torch.float32)
        return torch.nn.functional.normalize(x, dim=-1).half()

    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    images = embed(centres[labels] + 0.35 * rng.normal(size=(len(labels), LATENT)) * scale)
    prompts = embed(centres[:, None] + 0.2 * rng.normal(size=(CLASSES, TEMPLATES, LATENT)) * scale)
    return {"format": cached_zeroshot.FORMAT, "format_version": cached_zeroshot.FORMAT_VERSION, "image_emb": images,
            "labels": torch.as_tensor(labels), "text_emb": prompts, "classnames": [f"class {c}" for c in range(CLASSES)],
            "templates": [f"t{t} {{c}}" for t in range(TEMPLATES)], "dataset": "wds/synthetic",
            "dataset_root": "/nowhere", "teacher_fingerprint": fingerprint, "teacher": {}, "normalized": True,
            "dtype": "float16"}


def test_identity_reconstruction_gives_the_teachers_accuracy_and_a_broken_one_does_not():
    payload = synthetic_zeroshot()
    teacher = cached_zeroshot.zeroshot_metrics(payload)
    assert teacher["zeroshot_acc1"] > 0.9 and teacher["zeroshot_acc5"] == 1.0
    assert cached_zeroshot.zeroshot_metrics(payload, image_fn=lambda x: x) == teacher
    assert cached_zeroshot.zeroshot_metrics(payload, text_fn=lambda x: 3 * x) == teacher  # scale is normalised away
    constant = lambda x: torch.ones_like(x)  # noqa: E731 - a fully collapsed RDM
    assert cached_zeroshot.zeroshot_metrics(payload, image_fn=constant)["zeroshot_acc1"] == pytest.approx(1 / CLASSES)
    assert cached_zeroshot.zeroshot_metrics(payload, text_fn=constant)["zeroshot_acc1"] == pytest.approx(1 / CLASSES)


@pytest.mark.slow
def test_train_rdm_reports_zeroshot_accuracy_per_rdm_and_the_teacher_line(tmp_path):
    cache = write_cache(tmp_path / "cache", [400, 400])
    cached_zeroshot.write_zeroshot_eval(cache / cached_zeroshot.FILE_NAME, synthetic_zeroshot())  # found by default
    out = tmp_path / "run"
    result = train_rdm_cli("--cache", cache, "--out", out, "--epochs", 12, "--holdout-fraction", 0.1,
                           "--hidden-dim", 48, "--bottleneck-dim", 12, "--lr", 3e-3, "--batch-size", 32,
                           "--rates", "0.01,300")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "rdm_eval.json").read_text())
    teacher = report["teacher"]["zeroshot_acc1"]
    assert teacher > 0.9 and report["zeroshot"]["classes"] == CLASSES
    rows = {(r["modality"], r["rate_weight"]): r for r in report["rdms"]}
    for modality in ("image", "text"):
        collapsed, strong = rows[(modality, 0.01)], rows[(modality, 300.0)]
        assert collapsed["cosine"] < 0.3  # R=0.01: distortion costs nothing, the reconstruction says nothing
        assert strong["zeroshot_acc1"] >= teacher - 0.15, (modality, strong)
        assert collapsed["zeroshot_acc1"] <= teacher - 0.5, (modality, collapsed)
        assert "zeroshot_acc5" in strong
    table = (out / "rdm_eval.md").read_text()
    assert "zeroshot_acc1" in table.splitlines()[2] and "Zero-shot accuracy on 96 images" in table
    assert f"zeroshot_acc1 {teacher:.4f}" in table  # the teacher line


def test_train_rdm_refuses_a_zeroshot_file_of_another_teacher(tmp_path, capsys):
    cache = write_cache(tmp_path / "cache", [50])
    other = cached_zeroshot.write_zeroshot_eval(tmp_path / "zs.pt", synthetic_zeroshot(fingerprint="beef"))
    assert cli.main(["train-rdm", "--cache", str(cache), "--zeroshot-eval", str(other),
                     "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "another teacher" in err and "'beef'" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train-rdm", "--cache", str(cache), "--zeroshot-eval", str(tmp_path / "none.pt"),
                     "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
