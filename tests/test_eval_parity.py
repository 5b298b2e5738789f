"""Our zero-shot numbers agree with CLIP_benchmark's (the field's referee) on the same model and data."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from test_eval_support import export_local_dir, write_wds_classification, write_wds_retrieval

pytest.importorskip("clip_benchmark")

TOLERANCE = 0.001  # 0.1 points


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory):
    return export_local_dir("tiny-vit-student", tmp_path_factory.mktemp("model"), seed=3)


def clip_benchmark_run(tmp_path, spec, dataset, root, task, recall_k=(1, 5, 10)) -> dict:
    """CLIP_benchmark's own `eval` code path, in-process (its CLI would not see our model configs)."""
    from clip_benchmark import cli
    output = tmp_path / f"clip_benchmark_{task}.json"
    args = argparse.Namespace(
        dataset=dataset, dataset_root=str(root), split="test", model=spec, pretrained="", task=task, amp=False,
        num_workers=1, recall_k=list(recall_k), seed=0, batch_size=8, model_cache_dir=None, annotation_file="",
        custom_classname_file=None, custom_template_file=None, dump_classnames=False, dump_templates=False,
        language="en", output=str(output), verbose=False, save_clf=None, load_clfs=[], skip_existing=False,
        model_type="open_clip", wds_cache_dir=None, distributed=False, skip_load=False, train_split="train",
        val_split=None, val_proportion=None)
    cli.run(args)
    return json.loads(output.read_text())


def ours(spec, dataset, root, task, recall_k=(1, 5, 10), **options) -> dict:
    from cifd_clip.evaluation.runner import evaluate_model_on_dataset
    from cifd_clip.clip_models import load_model
    return evaluate_model_on_dataset(load_model(spec), dataset, root, task, batch_size=5, workers=2,
                                     recall_k=recall_k, show_progress=False, options=options)


def assert_same_metrics(ours_metrics: dict, reference: dict):
    assert set(ours_metrics) == set(reference)
    for name, value in reference.items():
        assert ours_metrics[name] == pytest.approx(value, abs=TOLERANCE), name


def test_classification_matches_clip_benchmark(tmp_path, model_spec):
    root = write_wds_classification(tmp_path / "cls", n_classes=12, per_class=4, shards=3)
    reference = clip_benchmark_run(tmp_path, model_spec, "wds/cls", root, "zeroshot_classification")
    result = ours(model_spec, "wds/cls", root, "zeroshot_classification")

    assert result["status"] == "ok" and result["num_images"] == 48
    assert_same_metrics(result["metrics"], reference["metrics"])
    for key in ("dataset", "model", "pretrained", "task", "language"):
        assert result[key] == reference[key], key
    assert result["images_per_second"] > 0


def test_the_parity_model_makes_varied_predictions(tmp_path, model_spec):
    """Parity on a model that always predicts one class would prove little."""
    from cifd_clip.evaluation.datasets import build_dataset, make_loader
    from cifd_clip.evaluation.zeroshot import build_classifier
    from cifd_clip.clip_models import load_model

    root = write_wds_classification(tmp_path / "cls", n_classes=12, per_class=4, shards=3)
    tower = load_model(model_spec)
    data, info = build_dataset("wds/cls", root, tower.preprocess_val)
    classifier = build_classifier(tower.model, tower.tokenizer, info.classnames, info.templates, "cpu")
    with torch.no_grad():
        predicted = torch.cat([(tower.model.encode_image(x, normalize=True) @ classifier).argmax(1)
                               for x, _ in make_loader(data, info, 16, 0)])
    assert len(predicted.unique()) >= 3


def test_retrieval_matches_clip_benchmark(tmp_path, model_spec):
    root = write_wds_retrieval(tmp_path / "ret", n_images=30, captions=3, shards=2)
    reference = clip_benchmark_run(tmp_path, model_spec, "wds/ret", root, "zeroshot_retrieval", recall_k=(1, 5, 10))
    result = ours(model_spec, "wds/ret", root, "zeroshot_retrieval")

    assert result["num_images"] == 30
    assert_same_metrics(result["metrics"], reference["metrics"])
    # a random model is far from perfect, so the comparison above is not between two 100% scores
    assert result["metrics"]["image_retrieval_recall@1"] < 0.5


def test_fewer_than_five_classes_reports_no_acc5(tmp_path, model_spec):
    root = write_wds_classification(tmp_path / "cls4", n_classes=4, per_class=3, shards=1)
    reference = clip_benchmark_run(tmp_path, model_spec, "wds/cls4", root, "zeroshot_classification")
    result = ours(model_spec, "wds/cls4", root, "zeroshot_classification")

    assert result["metrics"]["acc5"] is None  # CLIP_benchmark writes NaN, which is not valid JSON
    assert result["metrics"]["acc1"] == pytest.approx(reference["metrics"]["acc1"], abs=TOLERANCE)
    assert result["metrics"]["mean_per_class_recall"] == pytest.approx(
        reference["metrics"]["mean_per_class_recall"], abs=TOLERANCE)
