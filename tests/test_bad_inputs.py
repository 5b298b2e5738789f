"""The catalogue of faults and bad inputs: each ends in one sentence and a non-zero exit, never a traceback,
and nothing that existed before the command is changed (or lost) by it (a run's out.log excepted: a refused
resume is appended to it, with its sentence).

Commands run in-process through the CLI's own entry point (`cifd_clip.cli.main`), as a user would run them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifd_clip.cli import main

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict:
    """Every file under root with its size and content hash (a changed or removed file shows)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not (path.name.startswith("out") and path.suffix == ".log"):
            out[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def refused(capsys, root: Path, argv: list, code: int, *words: str) -> str:
    """Run `cifd-clip ARGV`; assert exit code, one clean sentence with `words`, and no existing file touched."""
    before = snapshot(root)
    assert main([str(a) for a in argv]) == code, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip(), err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    after = snapshot(root)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"{argv[0]} changed {changed}"
    return err


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_data_dir, demo_train_spec):
    """A teacher weights file, its cache (1 view), an RDM file, a student checkpoint and an export."""
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.clip_models import load_model

    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    teacher = root / "teacher.pt"
    torch.save(load_model("tiny-vit-teacher").model.state_dict(), teacher)
    common = ["--workers", "0", "--batch-size", "16"]
    assert main(["embed", "--teacher", f"tiny-vit-teacher@{teacher}", "--train-data", demo_train_spec,
                 "--out", str(root / "cache"), "--threads", "1", *common]) == 0
    torch.manual_seed(0)
    RDMFamily.build({"image": 128, "text": 128}, [10.0, 100.0], hidden_dim=16, bottleneck_dim=4).save(root / "rdm.pt")
    assert main(["train", "--model", "tiny-vit-student", "--train-data", demo_train_spec, "--logs", str(root / "runs"),
                 "--name", "student", "--batch-size", "16", "--workers", "0"]) == 0
    student = root / "runs" / "student" / "checkpoints" / "epoch_1.pt"
    assert main(["export", "--checkpoint", str(student), "--out", str(root / "export"), "--no-verify"]) == 0
    return {"root": root, "teacher": teacher, "cache": root / "cache", "rdm": root / "rdm.pt", "student": student,
            "export": root / "export", "data": demo_data_dir, "spec": demo_train_spec}


def distill_args(w, *extra):
    return ["distill", "--model", "tiny-vit-student", "--train-data", w["spec"], "--cache", w["cache"],
            "--logs", w["root"] / "runs", "--workers", "0", "--batch-size", "16", *extra]


def train_args(w, *extra):
    return ["train", "--model", "tiny-vit-student", "--train-data", w["spec"], "--logs", w["root"] / "runs",
            "--workers", "0", "--batch-size", "16", *extra]


# ---------------------------------------------------------------- silent damage


def test_embedding_other_data_with_the_same_shard_names_is_refused_then_redone_with_overwrite(world, tmp_path, capsys):
    from cifd_clip.data.shards import iter_raw_samples, write_shard

    other = tmp_path / "other"
    for n in range(8):  # same names and keys, other captions: other data
        raws = list(iter_raw_samples(str(world["data"] / "train" / f"{n:05d}.tar")))
        write_shard(other / f"{n:05d}.tar", [{"__key__": r["__key__"], "jpg": r["jpg"], "txt": "something else"}
                                             for r in raws])
    (other / "sizes.json").write_text((world["data"] / "train" / "sizes.json").read_text())
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-r", str(world["cache"]), str(cache)], check=True)
    argv = ["embed", "--teacher", f"tiny-vit-teacher@{world['teacher']}", "--train-data", other / "{00000..00007}.tar",
            "--out", cache, "--workers", "0", "--threads", "1"]
    refused(capsys, tmp_path, argv, 1, "00000.tar holds the embeddings of another file", "--overwrite")
    before = snapshot(cache)
    assert main([str(a) for a in argv] + ["--overwrite"]) == 0
    assert snapshot(cache)["00000.tar"] != before["00000.tar"]  # really embedded again


def test_embedding_another_shard_set_into_the_same_cache_is_refused(world, tmp_path, capsys):
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-r", str(world["cache"]), str(cache)], check=True)
    argv = ["embed", "--teacher", f"tiny-vit-teacher@{world['teacher']}",
            "--train-data", world["data"] / "val" / "{00000..00003}.tar", "--out", cache, "--workers", "0"]
    refused(capsys, tmp_path, argv, 1, "other shards")


def test_a_second_run_on_the_same_run_folder_waits_for_no_one_it_is_refused(world, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cifd_clip.output_checks import hold_run_lock; "
                               "hold_run_lock(sys.argv[1], 'run folder'); print('held', flush=True); time.sleep(60)",
         str(world["root"] / "runs" / "busy")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(capsys, world["root"], train_args(world, "--name", "busy"), 1, "in use by another cifd-clip run",
                f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # the lock of a killed run is gone with its process: the next run proceeds
    assert main([str(a) for a in train_args(world, "--name", "busy", "--stop-after-steps", "1")]) == 0


def test_export_into_a_folder_with_results_is_refused_and_overwrite_leaves_no_stray_file(world, tmp_path, capsys):
    out = tmp_path / "export"
    subprocess.run(["cp", "-r", str(world["export"]), str(out)], check=True)
    (out / "README.md").write_text("my own notes")
    refused(capsys, tmp_path, ["export", "--checkpoint", world["student"], "--out", out], 1, "not empty", "--overwrite")
    (out / "old-model.json").write_text("{}")  # what an earlier export of another model would have left ...
    (out / ".cifd-clip-export").write_text((out / ".cifd-clip-export").read_text() + "old-model.json\n")
    (out / "mine.txt").write_text("keep me")  # ... and a file the user put there
    assert main(["export", "--checkpoint", str(world["student"]), "--out", str(out), "--overwrite", "--no-verify"]) == 0
    assert not (out / "old-model.json").exists() and (out / "mine.txt").read_text() == "keep me"
    assert (out / "README.md").read_text() != "my own notes"


def test_train_rdm_does_not_replace_an_rdm_file_without_overwrite(world, tmp_path, capsys):
    out = tmp_path / "rdm.pt"
    out.write_bytes(world["rdm"].read_bytes())
    refused(capsys, tmp_path, ["train-rdm", "--cache", world["cache"], "--out", out, "--epochs", "1"], 1,
            "already holds an RDM checkpoint", "--overwrite")


# ---------------------------------------------------------------- late failures, found early


def test_a_missing_eval_set_is_found_before_training(world, capsys):
    refused(capsys, world["root"], train_args(world, "--name", "noeval", "--eval-every-epochs", "1",
                                              "--eval-datasets", "zeroshot", "nosuchset", "--eval-dataset-root",
                                              world["data"]), 1, "eval dataset nosuchset is not a folder")
    assert not (world["root"] / "runs" / "noeval" / "checkpoints").exists()


def test_eval_output_that_is_a_folder_is_refused_before_evaluating(world, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    refused(capsys, tmp_path, ["eval", "--model", world["student"], "--dataset", "wds/zeroshot", "--dataset-root",
                               world["data"] / "zeroshot", "--output", tmp_path / "results", "--workers", "0"],
            1, "--output", "is a folder")


def test_a_run_that_cannot_fit_its_checkpoints_on_the_disk_is_refused_before_training(world, capsys):
    refused(capsys, world["root"], train_args(world, "--name", "huge", "--epochs", "1000000000"), 1,
            "not enough disk space", "checkpoints")


def test_a_long_recipe_cut_short_by_stop_after_steps_needs_only_the_checkpoints_it_writes(world):
    """A smoke test of a long recipe (`--stop-after-steps 1`) writes one checkpoint; the space check knows it."""
    argv = train_args(world, "--name", "smoke", "--epochs", "1000000000", "--stop-after-steps", "1")
    assert main([str(a) for a in argv]) == 0
    assert [p.name for p in (world["root"] / "runs" / "smoke" / "checkpoints").glob("*.pt")] != []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_full_disk_while_writing_is_one_sentence(world, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(full)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for argv in (["export", "--checkpoint", world["student"], "--out", full / "export", "--no-verify"],
                     ["train-rdm", "--cache", world["cache"], "--out", full / "rdm.pt", "--epochs", "1",
                      "--hidden-dim", "512"],
                     ["embed", "--teacher", f"tiny-vit-teacher@{world['teacher']}", "--train-data", world["spec"],
                      "--out", full / "cache", "--augmentations", "4", "--dtype", "float32", "--workers", "0"],
                     train_args(world, "--logs", full / "runs", "--name", "full")):
            err = refused(capsys, tmp_path, argv, 1)
            assert "disk is full" in err or "not enough disk space" in err, err
            assert not [p for p in full.rglob("*") if p.is_file() and p.stat().st_size > 0 and ".tmp-" in p.name]
    finally:
        subprocess.run(["umount", str(full)])


# ---------------------------------------------------------------- one sentence, not a traceback


def test_resuming_with_another_models_checkpoint(world, capsys):
    refused(capsys, world["root"], train_args(world, "--name", "other", "--model", "tiny-rn-student", "--resume",
                                              world["student"]), 1, "another shape", "--resume")


def test_resuming_a_run_with_the_other_orthogonal_map(world, capsys):
    argv = distill_args(world, "--name", "expmap", "--rdm", world["rdm"], "--ibm-orthogonal-map", "matrix_exp",
                        "--stop-after-steps", "1")
    assert main([str(a) for a in argv]) == 0
    resumed = [a for a in argv if a not in ("--ibm-orthogonal-map", "matrix_exp")] + ["--resume", "latest"]
    refused(capsys, world["root"], resumed, 1, "pass --ibm-orthogonal-map matrix_exp to continue it")


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "nan", "--lr must be a positive number"), ("--beta1", "2", "--beta1 must be in [0, 1)"),
    ("--grad-clip-norm", "nan", "--grad-clip-norm must be a positive number"),
    ("--stop-after-steps", "-1", "--stop-after-steps must be at least 1"), ("--eps", "0", "--eps"),
    ("--wd", "-1", "--wd"), ("--warmup", "1.5", "--warmup"), ("--max-bad-fraction", "2", "--max-bad-fraction"),
    ("--epochs", "0", "--epochs"), ("--workers", "-1", "--workers"), ("--train-num-samples", "0", "--train-num"),
    ("--keep-step-checkpoints", "-1", "--keep-step-checkpoints must not be negative"),
    ("--save-frequency", "-1", "--save-every-epochs must not be negative"),
])
def test_nonsense_numbers_are_config_errors(world, capsys, flag, value, words):
    refused(capsys, world["root"], train_args(world, "--name", "nums", flag, value), 2, words)


@pytest.mark.parametrize("stage", ["export", "bench", "embed", "train"])
def test_an_output_path_of_the_wrong_kind(world, tmp_path, capsys, stage):
    file = tmp_path / "a_file"
    file.write_text("mine")
    argv = {"export": ["export", "--checkpoint", world["student"], "--out", file],
            "bench": ["bench", "--suite", REPO / "eval" / "suites" / "demo.yaml", "--model", world["student"],
                      "--output-dir", file],
            "embed": ["embed", "--teacher", f"tiny-vit-teacher@{world['teacher']}", "--train-data", world["spec"],
                      "--out", file],
            "train": ["train", "--model", "tiny-vit-student", "--train-data", world["spec"], "--logs", file]}[stage]
    refused(capsys, tmp_path, argv, 1, "is a file")


def test_a_model_json_that_is_a_list(world, tmp_path, capsys):
    (tmp_path / "model.json").write_text("[1, 2]")
    refused(capsys, tmp_path, train_args(world, "--model", tmp_path / "model.json"), 1, "holds a JSON list")


# ---------------------------------------------------------------- messages that say what is wrong


def test_a_yaml_file_given_as_the_teacher_is_named_as_such(world, tmp_path, capsys):
    (tmp_path / "teacher.yaml").write_text("a: 1\n")
    refused(capsys, tmp_path, ["embed", "--teacher", tmp_path / "teacher.yaml", "--train-data", world["spec"],
                               "--out", tmp_path / "c"], 1, "is a .yaml file, not a model")


def test_a_folder_given_as_weights_or_as_a_shard(world, tmp_path, capsys):
    refused(capsys, tmp_path, train_args(world, "--pretrained", tmp_path), 1, "is a folder")
    refused(capsys, tmp_path, ["train", "--model", "tiny-vit-student", "--train-data", tmp_path, "--logs",
                               tmp_path / "runs"], 1, "is a folder, not a tar file")


def test_a_text_file_or_a_malicious_pickle_as_a_checkpoint(world, tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello")
    refused(capsys, tmp_path, ["export", "--checkpoint", tmp_path / "notes.pt", "--out", tmp_path / "e"], 1,
            "not a PyTorch checkpoint")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    err = refused(capsys, tmp_path, ["export", "--checkpoint", tmp_path / "evil.pt", "--out", tmp_path / "e"], 1,
                  "never loaded")
    assert "weights_only=False" not in err and not (tmp_path / "pwned").exists()


def test_weights_loaded_from_a_file_bring_no_random_init_warning(world, caplog):
    from cifd_clip.clip_models import load_model
    load_model(f"tiny-vit-student@{world['student']}")
    assert "initialized randomly" not in caplog.text


def test_shards_without_images_name_no_option_that_does_not_exist(world, tmp_path, capsys):
    from cifd_clip.data.shards import write_shard
    for n in range(2):
        write_shard(tmp_path / f"{n}.tar", [{"__key__": f"k{n}{i}", "txt": "a caption"} for i in range(4)])
    err = refused(capsys, tmp_path, ["train", "--model", "tiny-vit-student", "--train-data", tmp_path / "{0..1}.tar",
                                     "--train-num-samples", "8", "--workers", "0", "--logs", tmp_path / "runs"], 1,
                  "an image (jpg, png or webp)")
    assert "--image-key" not in err


# ---------------------------------------------------------------- nonsense that used to be accepted


def test_sizes_json_claiming_far_more_samples_than_the_shards_hold(world, tmp_path, capsys):
    from cifd_clip.data.shards import iter_raw_samples, write_shard
    for n in range(2):
        raws = list(iter_raw_samples(str(world["data"] / "train" / f"{n:05d}.tar")))
        write_shard(tmp_path / f"{n}.tar", [{k: v for k, v in r.items() if not k.startswith("__") or k == "__key__"}
                                            for r in raws])
    (tmp_path / "sizes.json").write_text('{"0.tar": 600, "1.tar": 600}')
    refused(capsys, tmp_path, ["train", "--model", "tiny-vit-student", "--train-data", tmp_path / "{0..1}.tar",
                               "--workers", "0", "--logs", tmp_path / "runs"], 1, "says 0.tar holds 600 samples",
            "holds 6")


def test_random_view_of_a_one_view_cache(world, capsys):
    refused(capsys, world["root"], distill_args(world, "--name", "view", "--cache-view", "random"), 1,
            "--cache-view random needs a cache with several views")


# ---------------------------------------------------------------- minor


def test_a_stale_temp_file_of_a_killed_save_is_removed_when_the_run_resumes(world):
    folder = world["root"] / "runs" / "stale" / "checkpoints"
    folder.mkdir(parents=True)
    stale = folder / ".step_3.pt.tmp-999999"  # no such process
    stale.write_bytes(b"half a checkpoint")
    assert main([str(a) for a in train_args(world, "--name", "stale", "--stop-after-steps", "1")]) == 0
    assert not stale.exists()


def test_exported_files_are_readable_by_everyone(world):
    for name in ("open_clip_model.safetensors", "open_clip_config.json", "open_clip_state_dict.pt"):
        assert (world["export"] / name).stat().st_mode & 0o044 == 0o044, name


@pytest.mark.slow
def test_model_config_temp_folders_are_removed_at_exit(world, tmp_path):
    (tmp_path / "m.json").write_text((REPO / "cifd_clip" / "model_configs" / "tiny-vit-student.json").read_text())
    code = ("import cifd_clip.clip_models as t, sys; t.load_model(sys.argv[1]); print(t._config_folder)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.json")], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("cifd_cfg_") and not folder.exists()


def test_a_truncated_shard_is_counted_once(world, tmp_path):
    from cifd_clip.data.shards import BadSampleStats, iter_samples
    data = (world["data"] / "train" / "00000.tar").read_bytes()
    (tmp_path / "0.tar").write_bytes(data[: len(data) // 2])
    stats = BadSampleStats()
    list(iter_samples(str(tmp_path / "0.tar"), stats=stats))
    assert stats.counts == {"unreadable_shard": 1}


# ---------------------------------------------------------------- more bad inputs, one sentence each


@pytest.mark.parametrize("extra, code, words", [
    (["--loss", "clipkd", "--rdm", "RDM"], 2, "--rdm is only used by the CIFD losses"),
    (["--fd-weight", "10"], 2, "--fd-weight is not used by --loss cifd"),
    (["--no-ibm", "--ibm-weight", "0.1"], 2, "--no-ibm"),
    (["--ibm-decoder", "shared", "--ibm-orthogonal-map", "matrix_exp"], 2, "--ibm-decoder shared has none"),
    (["--kd-dropout", "1"], 2, "--kd-dropout"),
    (["--teacher-logit-scale", "-1"], 2, "--teacher-logit-scale"),
    (["--rdm-weights", "1", "-1"], 2, "--rdm-weights"),
    (["--rdm", "RDM", "--rdm-weights", "1"], 1, "--rdm-weights gives 1 weights but the RDM checkpoint holds 2"),
    (["--rdm", "TEACHER"], 1, "RDM checkpoint"),
    (["--teacher-online"], 2, "--teacher-online needs --teacher"),
    (["--teacher", "TEACHER"], 2, "is only used with --teacher-online"),
    (["--distill-model", "tiny-vit-teacher", "--distill-pretrained", "TEACHER"], 2, "add --teacher-online"),
    (["--cache-view", "sideways"], 2, "invalid choice"),
    (["--device", "cuda:3"], 1, "CUDA"),
])
def test_distill_option_mistakes(world, capsys, extra, code, words):
    extra = [world["rdm"] if e == "RDM" else world["teacher"] if e == "TEACHER" else e for e in extra]
    if code == 2 and "invalid choice" in words:  # argparse's own sentence, exit 2
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in distill_args(world, "--name", "opts", *extra)])
        assert exit_info.value.code == 2 and words in capsys.readouterr().err
        return
    refused(capsys, world["root"], distill_args(world, "--name", "opts", *extra), code, words)


@pytest.mark.parametrize("argv, code, words", [
    (["train-rdm", "--cache", "CACHE", "--rates", "10", "10"], 2, "distinct"),
    (["train-rdm", "--cache", "CACHE", "--holdout-fraction", "0.6"], 2, "--holdout-fraction"),
    (["train-rdm", "--cache", "RDM"], 1, "is a file"),
    (["eval", "--model", "STUDENT", "--dataset", "nosuchset", "--dataset-root", "ROOT"], 2, "nosuchset"),
    (["eval", "--model", "STUDENT", "--dataset", "wds/zeroshot", "--dataset-root", "ROOT", "--recall-k", "0"], 2,
     "--recall-k"),
    (["export", "--checkpoint", "RDM", "--out", "ROOT/e2"], 1, "not a cifd_clip student checkpoint"),
    (["export", "--checkpoint", "ROOT/missing.pt", "--out", "ROOT/e3"], 1, "does not exist"),
    (["bench", "--suite", "ROOT/none.yaml", "--model", "STUDENT", "--output-dir", "ROOT/b"], 2, "none.yaml"),
    (["embed", "--teacher", "tiny-vit-teacher", "--train-data", "SPEC", "--out", "ROOT/c2", "--augmentations", "0"],
     2, "--augmentations"),
    (["cls-train", "--train-data", "cifar100:ROOT/none", "--model", "cnn2", "--precision", "pure_bf16"], 2,
     "is for the CLIP training stages"),
    (["embed", "--teacher", "tiny-vit-teacher", "--train-data", "SPEC", "--out", "ROOT/c3", "--aug-scale", "0", "2"],
     2, "--aug-scale"),
    (["cls-distill", "--train-data", "cifar100:ROOT/none", "--model", "cnn2", "--loss", "mgd", "--cache", "CACHE"], 2,
     "needs the teacher's feature maps"),
    (["cls-distill", "--train-data", "cifar100:ROOT/none", "--model", "cnn2", "--loss", "crd", "--cache", "CACHE",
      "--crd-momentum", "1"], 2, "--crd-momentum must be in [0, 1)"),
    (["cls-distill", "--train-data", "cifar100:ROOT/none", "--model", "cnn2", "--loss", "ifd", "--cache", "CACHE",
      "--ifd-projectors", "0"], 2, "--ifd-projectors must be at least 1"),
    (["cls-distill", "--train-data", "cifar100:ROOT/none", "--model", "cnn2", "--loss", "wsld", "--cache", "CACHE",
      "--mgd-level", "embedding"], 2, "--mgd-level is not used by --loss wsld"),
])
def test_other_stages_option_mistakes(world, capsys, argv, code, words):
    subs = {"CACHE": world["cache"], "RDM": world["rdm"], "STUDENT": world["student"], "SPEC": world["spec"],
            "ROOT": world["root"]}
    argv = [str(subs.get(a, a)).replace("ROOT", str(world["root"])) for a in argv]
    refused(capsys, world["root"], argv, code, words)


def test_a_tracker_that_does_not_exist_or_is_not_installed(world, capsys, monkeypatch):
    refused(capsys, world["root"], train_args(world, "--name", "trk", "--report-to", "tensorboard,mlflow"), 2,
            "'mlflow' is not a tracker")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    err = refused(capsys, world["root"], train_args(world, "--name", "trk", "--report-to", "all"), 1,
                  "--report-to wandb needs the wandb package", "pip install 'cifd_clip[wandb]'")
    assert not (world["root"] / "runs" / "trk").exists(), err
    refused(capsys, world["root"], ["train-rdm", "--cache", world["cache"], "--out", world["root"] / "rdm-trk",
                                    "--report-to", "wandb"], 1, "cifd_clip[wandb]")


def test_wandb_without_a_login_is_one_sentence_and_leaves_no_run(world, tmp_path, capsys, monkeypatch):
    """Online wandb with no API key (and a server address that answers nothing): refused before the run writes."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for key, value in {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": tmp_path / "cfg", "WANDB_CACHE_DIR": tmp_path / "cache",
                       "WANDB_DATA_DIR": tmp_path / "data", "WANDB_ERROR_REPORTING": "false"}.items():
        monkeypatch.setenv(key, str(value))
    refused(capsys, world["root"], train_args(world, "--name", "nologin", "--report-to", "wandb"), 1,
            "could not start a wandb run", "WANDB_MODE=offline")
    assert not (world["root"] / "runs" / "nologin").exists()


def test_a_config_file_that_is_not_a_mapping_or_has_an_unknown_key(world, tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    refused(capsys, tmp_path, ["train", "--config", tmp_path / "list.yaml"], 2, "mapping")
    (tmp_path / "typo.yaml").write_text("lr: 0.1\nlearning_rate: 0.1\n")
    refused(capsys, tmp_path, ["train", "--config", tmp_path / "typo.yaml"], 2, "unknown config key 'learning_rate'")
    refused(capsys, tmp_path, ["train", "--config", tmp_path / "none.yaml"], 2, "does not exist")


def test_an_epoch_that_repeats_samples_says_so(world, tmp_path, caplog):
    """A sizes.json that overcounts, but by less than the refused factor: the run trains and warns that the
    epoch read samples twice, instead of repeating them silently."""
    import json
    import logging

    from cifd_clip.data.shards import iter_raw_samples, write_shard
    counts = {}
    for n in range(2):
        raws = list(iter_raw_samples(str(world["data"] / "train" / f"{n:05d}.tar")))
        write_shard(tmp_path / f"{n}.tar", [{k: v for k, v in r.items() if not k.startswith("__") or k == "__key__"}
                                            for r in raws])
        counts[f"{n}.tar"] = len(raws)
    (tmp_path / "sizes.json").write_text(json.dumps({k: int(1.5 * v) for k, v in counts.items()}))
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--model", "tiny-vit-student", "--train-data", str(tmp_path / "{0..1}.tar"),
                     "--workers", "0", "--batch-size", "16", "--logs", str(tmp_path / "runs"), "--name", "wrap"]) == 0
    assert "a second time" in caplog.text and "sizes.json" in caplog.text


# ---------------------------------------------------------------- make-shards and img2dataset's stats files


def _one_image_folder(folder: Path) -> Path:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "a.jpg")
    (folder / "a.txt").write_text("a grey square")
    return folder


def test_make_shards_bad_inputs(tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, tmp_path, ["make-shards", "--input", tmp_path / "none.csv", "--out", out], 1,
            "none.csv does not exist")
    (tmp_path / "comma.csv").write_text("filepath,title\na.jpg,a caption\n")  # open_clip_train's default is a tab
    refused(capsys, tmp_path, ["make-shards", "--input", tmp_path / "comma.csv", "--out", out], 1,
            "no column 'filepath' (--csv-img-key)", "--csv-separator ','")
    refused(capsys, tmp_path, ["make-shards", "--input", tmp_path / "comma.csv", "--out", out,
                               "--csv-separator", ",", "--csv-caption-key", "caption"], 1, "no column 'caption'")
    refused(capsys, tmp_path, ["make-shards", "--input", tmp_path / "comma.csv", "--out", out,
                               "--csv-separator", ", "], 2, "--csv-separator must be one character")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "only.txt").write_text("a caption without any image")
    refused(capsys, tmp_path, ["make-shards", "--input", tmp_path / "empty", "--out", out], 1, "holds no images")
    assert not out.exists()


def test_make_shards_refuses_a_folder_it_did_not_write_or_other_settings(tmp_path, capsys):
    src = _one_image_folder(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.md").write_text("mine")
    refused(capsys, tmp_path, ["make-shards", "--input", src, "--out", tmp_path / "busy"], 1,
            "files that make-shards did not write", "--overwrite")
    assert main(["make-shards", "--input", str(src), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    refused(capsys, tmp_path, ["make-shards", "--input", src, "--out", tmp_path / "out", "--image-size", "4"], 1,
            "another input or with other settings", "--overwrite")
    refused(capsys, tmp_path, ["make-shards", "--input", src, "--out", tmp_path / "out", "--samples-per-shard", "0"],
            2, "--samples-per-shard must be at least 1")
    refused(capsys, tmp_path, ["make-shards", "--input", src, "--out", src], 1, "is the --input folder")


def test_img2dataset_stats_files_that_are_broken_or_claim_too_much(tmp_path, capsys):
    """Raw img2dataset output is counted from its NNNNN_stats.json: one without 'successes', or one that claims
    far more samples than its shard holds, is refused before the run starts."""
    import json

    src = _one_image_folder(tmp_path / "src")
    data = tmp_path / "data"
    assert main(["make-shards", "--input", str(src), "--out", str(data)]) == 0  # 00000.tar with 1 sample
    capsys.readouterr()
    (data / "sizes.json").unlink()  # what img2dataset leaves: the tar and its stats file
    stats = json.loads((data / "00000_stats.json").read_text())
    argv = ["train", "--model", "tiny-vit-student", "--train-data", data / "00000.tar", "--workers", "0",
            "--batch-size", "1", "--logs", tmp_path / "runs"]
    (data / "00000_stats.json").write_text(json.dumps({**stats, "successes": 600}))
    refused(capsys, tmp_path, argv, 1, "00000_stats.json says 00000.tar holds 600 samples but it holds 1")
    (data / "00000_stats.json").write_text(json.dumps({"count": 1}))
    refused(capsys, tmp_path, argv, 1, "00000_stats.json is not an img2dataset stats file")


# ---------------------------------------------------------------- teacher space and cross-model tasks


def test_a_teacher_space_export_of_a_run_without_a_map_is_refused(world, tmp_path, capsys):
    refused(capsys, world["root"], ["export", "--checkpoint", world["student"], "--out", tmp_path / "ts",
                                    "--space", "teacher", "--teacher-cache", world["cache"]], 1,
            "has none", "--teacher-map procrustes")
    assert not (tmp_path / "ts").exists()


def test_a_cross_model_task_without_a_gallery_or_in_another_width_is_refused(world, tmp_path, capsys):
    base = ["eval", "--model", world["student"], "--dataset", "wds/zeroshot", "--dataset-root",
            world["data"] / "zeroshot", "--workers", "0", "--output", tmp_path / "r.json"]
    refused(capsys, world["root"], [*base, "--task", "cross_model_classification"], 2, "--gallery-model TEACHER")
    refused(capsys, world["root"], [*base, "--task", "cross_model_classification", "--gallery-model",
                                    f"tiny-vit-teacher@{world['teacher']}"], 1, "export the student into the teacher's")
    assert not (tmp_path / "r.json").exists()


def test_several_datasets_into_one_root_or_output_are_refused(world, tmp_path, capsys):
    refused(capsys, world["root"], ["eval", "--model", world["student"], "--dataset", "wds/zeroshot", "wds/retrieval",
                                    "--dataset-root", world["data"]], 2, "must be a template with {dataset}")


def test_a_csv_that_is_not_there_is_refused_before_training(world, tmp_path, capsys):
    refused(capsys, world["root"], ["train", "--model", "tiny-vit-student", "--train-data", tmp_path / "no.csv",
                                    "--logs", tmp_path / "runs", "--workers", "0"], 1, "is not a file")
