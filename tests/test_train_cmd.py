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
