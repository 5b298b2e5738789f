"""The demo: a reduced run of every stage, and the driver's refusals and stage failures."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from cifd_clip.demo.steps import DEFAULT_RECIPES, MODELS, STEPS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifd_clip", "demo", "--no-stream", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    result = run_demo("--out", str(out), "--scale", "small")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.slow
def test_every_stage_ran_and_the_report_has_table_and_plots(small_demo):
    out, stdout = small_demo
    for step in STEPS:
        log = (out / "logs" / f"{step.name}.log").read_text()
        assert log.startswith(f"$ cifd-clip {step.stage} --config"), step.name
    report = (out / "report" / "report.md").read_text()
    for _, label in MODELS:
        assert label in report and label in stdout
    assert "## Verdict" in report and "wall time" in report.lower()
    assert "mean ± std" in report and "clip-demo-seeds.md" in report  # the seed spread the study measured
    assert "What CIFD's parts add" in report and "gap-testbeds.md" in report  # what the test beds measured
    for image in ("rate_distortion.png", "training_curves.png"):
        assert (out / "report" / image).read_bytes()[:8] == PNG_MAGIC
        assert f"({image})" in report
    assert (out / "runs" / "rdm" / "rdm.pt").is_file() and (out / "cache" / "cache.json").is_file()
    assert "zeroshot_acc1" in (out / "runs" / "rdm" / "rdm_eval.md").read_text()  # RDMs scored on the zero-shot set
    # train-rdm at its defaults: rate rises and distortion falls with R, for both modalities
    rdm_report = json.loads((out / "runs" / "rdm" / "rdm_eval.json").read_text())
    assert rdm_report["warnings"] == [] and len(rdm_report["rdms"]) == 6


@pytest.mark.slow
def test_the_teacher_sees_every_shard_and_the_students_its_first_quarter(small_demo):
    """The regime of a pretrained teacher distilled on a smaller set: 16 shards for the teacher, 4 for the
    students and the cache; the seed and RDM-ordering studies read these commands back from the report."""
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "studies"))
    from demo_seeds import student_commands
    from rdm_ordering import demo_commands

    out = small_demo[0]
    students = student_commands(out)
    assert sorted(students) == ["student-cifd", "student-kd", "student-nokd"]
    for argv in students.values():
        assert argv[argv.index("--train-data") + 1] == str(out / "data" / "train" / "{00000..00003}.tar")
    steps = demo_commands(out)
    assert steps["teacher"][steps["teacher"].index("--train-data") + 1] == str(out / "data" / "train" / "{00000..00015}.tar")
    assert steps["embed"][steps["embed"].index("--train-data") + 1] == str(out / "data" / "train" / "{00000..00003}.tar")
    assert json.loads((out / "cache" / "cache.json").read_text())["num_samples"] == 1000


@pytest.mark.slow
def test_every_model_beats_chance_widely(small_demo):
    """The CIFD student at every default option, beside no-KD and KD students trained the same way."""
    from cifd_clip.data.shapes import CLASSNAMES

    results = json.loads((small_demo[0] / "report" / "results.json").read_text())
    chance = 1 / len(CLASSNAMES)
    for label, row in results["models"].items():
        assert row["acc1"] > 4 * chance, f"{label}: zero-shot top-1 {row['acc1']:.3f} vs chance {chance:.3f}"
        assert row["text_retrieval_recall@5"] > 0.1, label
    assert len(results["verdict"]) >= 3
    assert any("no-KD student" in line for line in results["verdict"])


@pytest.mark.slow
def test_the_students_in_the_teachers_space_search_its_index(small_demo):
    """Every teacher-space export's queries find the teacher's images far above chance, and the report says so."""
    out = small_demo[0]
    results = json.loads((out / "report" / "results.json").read_text())
    rows = results["teacher_space"]
    assert list(rows) == ["teacher → teacher index", "student, CIFD (its IBM map Q)", "student, CIFD + Procrustes",
                          "student, no KD + Procrustes", "student, KD (open_clip) + Procrustes"]
    for label, row in rows.items():
        assert row["image_retrieval_recall@5"] > 0.2, label  # the small demo's 60 images: chance at R@5 is 8%
    assert any("teacher's index" in line for line in results["verdict"])
    report = (out / "report" / "report.md").read_text()
    assert "## Student queries → teacher index" in report and "--space teacher" in report


@pytest.mark.slow
def test_exported_student_reloads_through_plain_open_clip_with_the_same_embeddings(small_demo):
    import open_clip
    import torch

    from cifd_clip.clip_models import load_model

    out = small_demo[0]
    exported, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out / 'export' / 'student-cifd'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out / 'export' / 'student-cifd'}")
    trained = load_model(str(out / "runs" / "student-cifd" / "checkpoints" / "epoch_latest.pt")).model
    exported.eval(), trained.eval()
    size = exported.visual.image_size
    images = torch.rand(4, 3, *(size if isinstance(size, (tuple, list)) else (size, size)))
    tokens = tokenizer(["a red circle.", "a blue star.", "two shapes", "a photo of a green cross."])
    with torch.no_grad():
        assert torch.allclose(exported.encode_image(images), trained.encode_image(images), atol=1e-5)
        assert torch.allclose(exported.encode_text(tokens), trained.encode_text(tokens), atol=1e-5)


def test_a_foreign_non_empty_out_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_demo("--out", str(tmp_path), timeout=120)
    assert result.returncode != 0
    assert "not empty and was not written by the demo" in result.stderr + result.stdout
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failing_stage_stops_the_demo_naming_the_step_and_its_log(tmp_path):
    recipes = tmp_path / "recipes"
    shutil.copytree(DEFAULT_RECIPES, recipes)
    (recipes / "data.yaml").write_text("train_samples: 40\nval_samples: 4\nzeroshot_samples: 36\n"
                                       "retrieval_samples: 4\nsamples_per_shard: 20\n")
    (recipes / "teacher.yaml").write_text((recipes / "teacher.yaml").read_text() + "learning_rate: 0.1\n")
    out = tmp_path / "out"
    result = run_demo("--out", str(out), "--recipes", str(recipes), timeout=300)
    assert result.returncode == 1
    assert "step 'teacher' failed" in result.stdout and str(out / "logs" / "teacher.log") in result.stdout
    assert "learning_rate" in result.stdout  # the stage's own one-sentence error is shown
    assert (out / "data" / "demo_info.json").is_file()  # earlier steps ran


def test_scale_file_naming_an_unknown_step_is_refused(tmp_path):
    recipes = tmp_path / "recipes"
    shutil.copytree(DEFAULT_RECIPES, recipes)
    (recipes / "scale-small.yaml").write_text("techer: {epochs: 1}\n")
    result = run_demo("--out", str(tmp_path / "out"), "--recipes", str(recipes), "--scale", "small", timeout=120)
    assert result.returncode != 0 and "unknown steps: techer" in result.stderr + result.stdout


def _row(run, acc1, recall):
    from cifd_clip.demo.report import RETRIEVAL_ROWS

    return {"run": run, "acc1": acc1, **{key: recall for key, _ in RETRIEVAL_ROWS}}


def test_verdict_says_plainly_who_won_from_the_numbers():
    from cifd_clip.demo.report import verdict

    labels = [label for _, label in MODELS]
    losing = dict(zip(labels, [_row("teacher", 0.5, 0.7), _row("student-nokd", 0.36, 0.6),
                               _row("student-kd", 0.44, 0.6), _row("student-cifd", 0.27, 0.4)]))
    text = " ".join(verdict(losing))
    assert "does NOT beat the no-KD student on zero-shot top-1 (27.0% vs 36.0%)" in text
    assert "teacher stays ahead" in text
    winning = dict(zip(labels, [_row("teacher", 0.3, 0.7), _row("student-nokd", 0.2, 0.5),
                                _row("student-kd", 0.298, 0.6), _row("student-cifd", 0.35, 0.6)]))
    text = " ".join(verdict(winning))
    assert "beats the no-KD student on zero-shot top-1" in text and "ties the KD student on mean retrieval" in text
    assert "student-cifd) matches or beats the teacher" in text
