"""`run_suite`: models side by side over a suite; a missing dataset is reported, not fatal."""
from __future__ import annotations

import json

import pytest
import torch

from cifd_clip.errors import ConfigError
from cifd_clip.evaluation.suite import run_suite
from test_eval_support import export_local_dir, write_wds_classification, write_wds_retrieval


@pytest.fixture(autouse=True)
def few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def suite_with_a_missing_set() -> dict:
    return {"name": "mini", "datasets": [
        {"name": "wds/mini_cls", "task": "zeroshot_classification", "root": "{root}/zeroshot", "label": "mini cls"},
        {"name": "wds/mini_ret", "task": "zeroshot_retrieval", "root": "{root}/retrieval", "recall_k": [1, 5]},
        {"name": "imagenet-a", "root": "{root}/imagenet-a", "label": "ImageNet-A"},
    ]}


def test_suite_table_has_models_side_by_side_and_marks_missing_sets(tmp_path):
    data = tmp_path / "data"
    write_wds_classification(data / "zeroshot", n_classes=6, per_class=2, shards=1)
    write_wds_retrieval(data / "retrieval", n_images=8, captions=2, shards=1)
    student = export_local_dir("tiny-vit-student", tmp_path / "student", seed=1)

    summary = run_suite(suite_with_a_missing_set(), [student, "tiny-rn-student"], tmp_path / "out",
                        dataset_root_base=str(data), batch_size=4, workers=0, show_progress=False)

    table = (tmp_path / "out" / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| dataset | task"))
    assert header.endswith("| student | tiny-rn-student |")
    acc1_row = next(line for line in table.splitlines() if line.startswith("| mini cls |") and "| acc1 |" in line)
    assert len([c for c in acc1_row.split("|") if c.strip()]) == 5  # dataset, task, metric + two numbers
    missing_row = next(line for line in table.splitlines() if line.startswith("| ImageNet-A |"))
    assert missing_row.count(f"missing (looked in {data / 'imagenet-a'})") == 2
    assert "image_retrieval_recall@5" in table and "text_retrieval_recall@1" in table
    assert summary["missing"] == 2 and summary["errors"] == 0

    one = json.loads((tmp_path / "out" / "student__wds_mini_cls__zeroshot_classification.json").read_text())
    assert one["dataset"] == "wds/mini_cls" and one["model"] == student
    assert set(one["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert one["images_per_second"] > 0
    everything = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["status"] for r in everything["results"][1]] == ["ok", "ok", "missing"]


def test_a_broken_set_is_reported_and_the_rest_still_runs(tmp_path):
    data = tmp_path / "data"
    write_wds_classification(data / "zeroshot", n_classes=6, per_class=1, shards=1)
    (data / "retrieval").mkdir(parents=True)  # there, but no shards in it
    summary = run_suite(suite_with_a_missing_set(), ["tiny-vit-student"], tmp_path / "out",
                        dataset_root_base=str(data), batch_size=4, workers=0, show_progress=False)
    assert [r["status"] for r in summary["results"][0]] == ["ok", "error", "missing"]
    assert "error: " in summary["markdown"] and "nshards.txt is missing" in summary["markdown"]


def test_bad_suites_fail_before_any_model_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        run_suite({"datasets": [{"name": "imagenet-z", "root": "x"}]}, ["tiny-vit-student"], tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        run_suite({"datasets": [{"name": "imagenet1k", "root": "x", "roots": "y"}]}, ["tiny-vit-student"], tmp_path)
    with pytest.raises(ConfigError, match="dataset-root-base"):
        run_suite({"datasets": [{"name": "imagenet1k", "root": "{root}/in"}]}, ["tiny-vit-student"], tmp_path)


def test_shipped_suites_are_valid():
    from pathlib import Path

    from cifd_clip.evaluation.suite import load_suite
    suites = Path(__file__).resolve().parents[1] / "eval" / "suites"
    paper = load_suite(suites / "paper.yaml")
    assert [d["name"] for d in paper["datasets"]] == ["imagenet1k", "imagenetv2", "imagenet-r", "imagenet-a",
                                                      "objectnet", "flickr30k", "mscoco"]
    demo = load_suite(suites / "demo.yaml")
    assert [d["root"] for d in demo["datasets"]] == ["{root}/zeroshot", "{root}/retrieval"]
