"""The CLIP study script reruns cleanly: its quick form runs every step end to end and writes its page."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.study
def test_quick_study_runs_every_command_and_reports_each_run(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "studies" / "clip_cifd.py"), "--out", str(tmp_path),
                             "--quick", "--jobs", "1"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["config"] for r in results["runs"]} == {"no-kd", "kd", "cifd", "cifd-paper"}
    assert all(r["exit_code"] == 0 and 0 <= r["W"]["acc1"] <= 1 for r in results["runs"])
    cifd = next(r for r in results["runs"] if r["config"] == "cifd")
    assert "U" in cifd  # CIFD runs are also scored in the IBM's output space
    page = (tmp_path / "clip-cifd.md").read_text()
    assert "cifd-clip distill --config recipes/demo/student-cifd.yaml" in page and str(tmp_path) not in page
    assert "± " not in page.split("## Every run")[1]
    assert "% zero-shot top-1" in page.split("##")[0]  # the teacher's score, the students' reference
    # a rerun finds every run done and only rewrites the page
    again = subprocess.run([sys.executable, str(REPO / "studies" / "clip_cifd.py"), "--out", str(tmp_path),
                            "--quick"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((tmp_path / "results.json").read_text())["runs"] == results["runs"]
    # the teacher-space study reuses those students and adds their exports and cross-model benches
    space = subprocess.run([sys.executable, str(REPO / "studies" / "teacher_space.py"), "--out", str(tmp_path),
                            "--quick"], capture_output=True, text=True, timeout=600)
    assert space.returncode == 0, space.stdout[-2000:] + space.stderr[-2000:]
    rows = json.loads((tmp_path / "teacher_space.json").read_text())
    assert {(r["config"], r["map"]) for r in rows} == {("cifd", "learned"), ("cifd", "procrustes"), ("cifd", "lstsq"),
                                                       ("no-kd", "procrustes"), ("no-kd", "lstsq")}
    assert all(0 < r["recall_retained"] and 0 <= r["acc1"] <= 1 for r in rows)
    page = (tmp_path / "teacher-space.md").read_text()
    assert "--space teacher --teacher-map learned" in page and str(tmp_path) not in page


def test_the_classification_study_sets_up_only_what_the_chosen_runs_read(tmp_path):
    """`--only` on a baseline that reads the cache trains the main teacher and embeds once: no second
    teacher, RDM family or assistant (half an hour of set-up on 2 cores that none of its runs would read)."""
    sys.path.insert(0, str(REPO / "studies"))
    import gap_cls

    def steps(*names):
        cfgs = [c for c in gap_cls.configs(False) if c.name in names]
        return [name for name, _ in gap_cls.setup_steps(tmp_path, gap_cls.Scale(), cfgs)]

    assert steps("wsld") == ["data-teacher", "data-student", "teacher-vgg8", "embed-vgg8"]
    assert steps("at", "no-kd") == ["data-teacher", "data-student", "teacher-vgg8"]  # online: no cache
    assert steps("dgkd", "cifd-cnn8") == ["data-teacher", "data-student", "teacher-vgg8", "teacher-cnn8",
                                          "embed-cnn8", "rdm3-cnn8", "assistant"]
    assert len(steps(*[c.name for c in gap_cls.configs(False)])) == 12  # the whole study: every step


@pytest.mark.slow
@pytest.mark.study
def test_the_classification_gap_test_bed_has_its_gap_and_reruns_cleanly(tmp_path):
    """The quick form of studies/gap_cls.py: the teacher (vgg8, 4x the data) is far ahead of the student alone
    (cnn2) even at this size, every run finishes and is listed, and a rerun reuses every step."""
    script = [sys.executable, str(REPO / "studies" / "gap_cls.py"), "--out", str(tmp_path), "--quick", "--jobs", "1"]
    result = subprocess.run(script, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    facts, runs = results["testbed"], results["runs"]
    assert facts["vgg8"]["params"] >= 5 * facts["cnn2"]["params"] and facts["vgg8"]["macs"] >= 5 * facts["cnn2"]["macs"]
    no_kd = next(r for r in runs if r["config"] == "no-kd")
    assert facts["vgg8"]["acc1"] >= no_kd["acc1"] + 0.15
    assert {r["config"] for r in runs} == {"no-kd", "kd", "takd", "dgkd", "cifd", "cifd-heads"}
    assert all(r["exit_code"] == 0 for r in runs)
    # the students' set is the first quarter of the teacher's: the same images, in the same order
    import pickle
    teacher = pickle.loads((tmp_path / "data-teacher" / "cifar-100-python" / "train").read_bytes())
    student = pickle.loads((tmp_path / "data-student" / "cifar-100-python" / "train").read_bytes())
    assert (teacher[b"data"][:len(student[b"data"])] == student[b"data"]).all() and len(student[b"data"]) * 4 == \
        len(teacher[b"data"])
    page = (tmp_path / "gap-cls.md").read_text()
    assert "cifd-clip cls-distill" in page and str(tmp_path) not in page and "--rdm-teaching heads" in page
    again = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[setup]" not in again.stdout
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == runs


@pytest.mark.slow
@pytest.mark.study
def test_the_clip_gap_test_bed_reruns_cleanly(tmp_path):
    script = [sys.executable, str(REPO / "studies" / "gap_clip.py"), "--out", str(tmp_path), "--quick", "--jobs", "1"]
    result = subprocess.run(script, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["config"] for r in runs} == {"no-kd", "kd", "cifd", "heads"}
    assert "U" in next(r for r in runs if r["config"] == "heads")  # Û is the teacher term's decoder
    assert all(r["exit_code"] == 0 and 0 <= r["W"]["acc1"] <= 1 for r in runs)
    assert all("--model tiny-vit-student-s" in r["command"] for r in runs)
    page = (tmp_path / "gap-clip.md").read_text()
    assert "--rdm-teaching heads" in page and "22.7× the student's parameters" in page


def test_same_numbers_finds_a_moved_number_a_changed_tensor_and_a_missing_file(tmp_path, capsys):
    """studies/same_numbers.py, the check that a refactor moved no number: timings may differ, nothing else."""
    import torch
    sys.path.insert(0, str(REPO / "studies"))
    import same_numbers

    for side, acc, weight in (("a", 0.5, 1.0), ("b", 0.5, 1.0)):
        run = tmp_path / side / "runs" / "x"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"eval": {"acc1": acc}, "wall_time_s": 10 if side == "a" else 12,
                                                      "total_steps": 4}))
        torch.save({"state_dict": {"w": torch.full((2,), weight)}}, run / "epoch_latest.pt")
    assert same_numbers.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0  # only the wall time differs
    b_summary = tmp_path / "b" / "runs" / "x" / "summary.json"
    b_summary.write_text(json.dumps({"eval": {"acc1": 0.5}, "wall_time_s": 12, "total_steps": 5}))
    assert same_numbers.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1  # a count is no timing
    assert "/total_steps" in capsys.readouterr().out
    (tmp_path / "b" / "runs" / "x" / "summary.json").write_text(json.dumps({"eval": {"acc1": 0.5000001}}))
    assert same_numbers.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "/eval/acc1" in capsys.readouterr().out
    torch.save({"state_dict": {"w": torch.tensor([1.0, 1.0 + 1e-7])}}, tmp_path / "b" / "runs" / "x" / "epoch_latest.pt")
    (tmp_path / "b" / "runs" / "x" / "summary.json").write_text(json.dumps({"eval": {"acc1": 0.5}}))
    assert same_numbers.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "/state_dict/w" in capsys.readouterr().out
    (tmp_path / "b" / "runs" / "x" / "epoch_latest.pt").unlink()
    assert same_numbers.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "missing" in capsys.readouterr().out
