"""cifd-clip train: plain contrastive training, its outputs and its option checks."""
from __future__ import annotations

import json
import logging

import yaml

from cifd_clip.cli import main


def test_train_writes_config_metrics_summary_and_checkpoints(demo_train_spec, tmp_path, capsys, caplog):
    args = ["train", "--model", "tiny-rn-student", "--train-data", demo_train_spec, "--batch-size", "6",
            "--workers", "2", "--warmup", "1", "--logs", str(tmp_path), "--name", "rn", "--grad-clip-norm", "1.0"]
    caplog.set_level(logging.INFO)
    assert main(args) == 0
    # off a terminal, progress is a few log lines, not a bar redrawn with carriage returns at every step
    assert "\r" not in capsys.readouterr().err
    progress = [r.getMessage() for r in caplog.records if r.name == "cifd_clip.progress"]
    assert progress and progress[-1].startswith("step 8/8 (100%)") and len(progress) <= 8
    run = tmp_path / "rn"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "tiny-rn-student" and config["name"] == "rn" and config["grad_clip_norm"] == 1.0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))  # 48 samples / batch 6
    assert all(r["grad_norm"] > 0 and r["loss"] == r["contrastive"] for r in lines)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["bad_samples"]["good"] == 48 and summary["samples_per_s"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_1.pt", "epoch_latest.pt"]
    # the saved config runs again as --config (here: resumes the finished run, which has nothing left to do)
    assert main(["train", "--config", str(run / "config.yaml"), "--resume", "latest"]) == 0
    assert json.loads((run / "summary.json").read_text()) == summary


def test_bad_options_are_one_sentence_errors(demo_train_spec, tmp_path, capsys):
    base = ["train", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--logs", str(tmp_path)]
    assert main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert main([*base, "--batch-size", "64", "--workers", "0"]) == 1  # 48 samples: not one global batch
    assert "fewer than one global batch" in capsys.readouterr().err
    assert main([*base, "--accum-freq", "7", "--batch-size", "8", "--workers", "0"]) == 1
    assert "--accum-freq" in capsys.readouterr().err


def test_evaluation_during_training_reads_any_set_eval_reads(demo_train_spec, demo_data_dir, tmp_path):
    """Class folders by NAME=PATH beside a webdataset set by folder name, with the run's --recall-k."""
    from PIL import Image

    classes = tmp_path / "classes"
    for name, colour in (("red_square", (220, 20, 20)), ("blue_square", (20, 20, 220))):
        (classes / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 48), colour).save(classes / name / f"{i}.png")
    assert main(["train", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--batch-size", "16",
                 "--workers", "0", "--warmup", "1", "--logs", str(tmp_path), "--name", "ev", "--eval-every-epochs", "1",
                 "--eval-datasets", f"folder:shapes={classes}", "retrieval", "--eval-dataset-root", str(demo_data_dir),
                 "--recall-k", "1", "2"]) == 0
    evals = [json.loads(line)["eval"] for line in (tmp_path / "ev" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals[-1]["folder:shapes"]["num_images"] == 4 and 0 <= evals[-1]["folder:shapes"]["metrics"]["acc1"] <= 1
    assert set(evals[-1]["retrieval"]["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text")
                                                      for k in (1, 2)}


def test_an_unknown_eval_set_name_is_refused_before_training(demo_train_spec, tmp_path, capsys):
    assert main(["train", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--logs", str(tmp_path),
                 "--eval-every-epochs", "1", "--eval-datasets", "imagenet-z=/data/x"]) == 2
    assert "unknown dataset 'imagenet-z'" in capsys.readouterr().err
