"""`cifd-clip eval` and `cifd-clip bench` as a user runs them: exit codes, one-sentence errors, files written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_eval_support import write_wds_classification


def cifd_clip(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cifd_clip", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one sentence, no traceback
    return lines[0]


def test_unknown_dataset_name_is_a_config_error(tmp_path):
    proc = cifd_clip("eval", "--model", "tiny-vit-student", "--dataset", "imagenet-z", "--dataset-root", tmp_path)
    assert proc.returncode == 2
    assert "unknown dataset 'imagenet-z'" in error_line(proc)


def test_missing_dataset_root_names_the_path(tmp_path):
    proc = cifd_clip("eval", "--model", "tiny-vit-student", "--dataset", "wds/cars", "--dataset-root",
                     tmp_path / "no_such_folder")
    assert proc.returncode == 1
    assert f"not on disk: no folder at {tmp_path / 'no_such_folder'}" in error_line(proc)


@pytest.mark.slow
def test_eval_writes_clip_benchmark_json_and_its_config(tmp_path):
    root = write_wds_classification(tmp_path / "cls", n_classes=6, per_class=2, shards=2)
    out = tmp_path / "results" / "{dataset}_{task}.json"
    proc = cifd_clip("eval", "--model", "tiny-vit-student", "--dataset", "wds/mini", "--dataset-root", root,
                     "--batch-size", 4, "--num-workers", 4, "--output", out)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "results" / "wds_mini_zeroshot_classification.json"
    result = json.loads(written.read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(result)
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert result["num_images"] == 12  # 4 workers asked, 2 shards: every sample read exactly once
    assert written.with_suffix(".config.yaml").is_file()
    assert "images/s" in proc.stdout


@pytest.mark.slow
def test_bench_reports_missing_sets_and_exits_zero(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: tiny\ndatasets:\n  - {name: wds/mini, root: '{root}/cls'}\n"
                     "  - {name: mscoco, root: '{root}/coco'}\n")
    write_wds_classification(tmp_path / "data" / "cls", n_classes=5, per_class=1, shards=1)
    proc = cifd_clip("bench", "--suite", suite, "--model", "tiny-vit-student", "--output-dir", tmp_path / "out",
                     "--dataset-root-base", tmp_path / "data", "--num-workers", 0)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"missing (looked in {tmp_path / 'data' / 'coco'})" in table
    assert (tmp_path / "out" / "bench_config.yaml").is_file()


@pytest.mark.slow
def test_clip_benchmarks_own_flags_evaluate_several_datasets_in_one_run(tmp_path):
    """CLIP_benchmark's spelling as its users type it: underscores, several --dataset, a {dataset_cleaned} root."""
    for name, classes in (("wds-one", 4), ("wds-two", 5)):
        write_wds_classification(tmp_path / name, n_classes=classes, per_class=1, shards=1)
    proc = cifd_clip("eval", "--model", "tiny-vit-student", "--dataset", "wds/one", "wds/two", "--dataset_root",
                     str(tmp_path / "{dataset_cleaned}"), "--batch_size", 4, "--num_workers", 0, "--language", "en",
                     "--output", str(tmp_path / "out" / "{dataset}_{language}_{task}.json"))
    assert proc.returncode == 0, proc.stderr
    for name, classes in (("one", 4), ("two", 5)):
        result = json.loads((tmp_path / "out" / f"wds_{name}_en_zeroshot_classification.json").read_text())
        assert result["num_images"] == classes and result["language"] == "en"


@pytest.mark.parametrize("args, expected", [
    (["--dataset", "wds/a", "wds/b", "--dataset-root", "data"], "--dataset-root must be a template with {dataset}"),
    (["--dataset", "wds/a", "--dataset-root", "data", "--language", "fr"], "pass --classnames and --templates files"),
    (["--dataset", "wds/a", "--dataset-root", "data", "--language", "en", "fr"], "one --language per eval run"),
])
def test_clip_benchmark_habits_we_cannot_follow_are_one_sentence(args, expected):
    from cifd_clip.commands.eval import Config
    from cifd_clip.config import parse
    from cifd_clip.errors import ConfigError

    with pytest.raises(ConfigError, match=expected.replace("{", r"\{").replace("}", r"\}")):
        parse(Config, ["--model", "tiny-vit-student", *args])
