"""Checkpoint retention: which checkpoints a run keeps, how many it holds at once, and the disk check that counts
them (the resume after deleted checkpoints is in test_engine_resume.py)."""
from __future__ import annotations

import pytest

from cifd_clip.cli import main
from cifd_clip.engine.retention import Retention, peak_checkpoints, save_counts, to_delete


def _train(spec, logs, name, *extra):
    return main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--batch-size", "8",
                 "--workers", "0", "--warmup", "2", "--logs", str(logs), "--name", name, *extra])


def _files(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_keep_last_n_step_checkpoints_and_every_epoch_checkpoint():
    names = ["epoch_1.pt", "step_2.pt", "step_4.pt", "step_6.pt", "epoch_latest.pt"]
    assert to_delete(names + ["step_8.pt"], "step_8.pt", 5, Retention(keep_step_checkpoints=2)) == \
        ["step_2.pt", "step_4.pt"]
    assert to_delete(names + ["step_8.pt"], "step_8.pt", 5, Retention(keep_step_checkpoints=1)) == \
        ["step_2.pt", "step_4.pt", "step_6.pt"]
    # an epoch checkpoint deletes no step checkpoint below the limit, and every one is kept with 0
    assert to_delete(names + ["epoch_2.pt"], "epoch_2.pt", 5, Retention(keep_step_checkpoints=3)) == []
    assert to_delete(names + ["step_8.pt"], "step_8.pt", 5, Retention(keep_step_checkpoints=0)) == []


def test_delete_previous_keeps_the_newest_only_and_never_a_later_step():
    names = ["epoch_1.pt", "step_2.pt", "step_7.pt", "step_9.pt", "epoch_latest.pt", "notes.txt"]
    # step_9 was left by the run before a resume from an earlier checkpoint: it is ahead of step_7, kept
    assert to_delete(names, "step_7.pt", 5, Retention(delete_previous_checkpoint=True)) == ["epoch_1.pt", "step_2.pt"]


@pytest.mark.parametrize("start, end, total, spe, every, expected", [
    (0, 12, 12, 6, 0, (2, 0)),      # epoch ends only
    (0, 12, 12, 6, 2, (2, 4)),      # steps 2 4 8 10 (6 and 12 are epoch ends)
    (0, 9, 12, 6, 0, (1, 1)),       # a stop mid-epoch writes a step checkpoint
    (0, 8, 12, 6, 2, (1, 3)),       # ... which is a regular one when it falls on the cadence
    (9, 12, 12, 6, 2, (1, 1)),      # resumed at step 9: step 10, then epoch 2
    (0, 6, 12, 6, 0, (1, 0)),       # a stop at an epoch end writes the epoch checkpoint only
])
def test_save_counts(start, end, total, spe, every, expected):
    assert save_counts(start, end, total, spe, every) == expected


@pytest.mark.parametrize("end, every_steps, every_epochs, expected", [
    (18, 0, 2, (2, 0)),   # epochs 2 and 3 (the last); epoch 1 writes nothing
    (18, 0, 0, (1, 0)),   # the last epoch only (open_clip_train's --save-frequency 0)
    (18, 3, 2, (2, 4)),   # steps 3 6 9 15 (6 is epoch 1's end, written as a step checkpoint); 12 and 18 epochs
    (6, 0, 2, (1, 0)),    # a stop at epoch 1's end writes it
])
def test_save_counts_with_save_every_epochs(end, every_steps, every_epochs, expected):
    assert save_counts(0, end, 18, 6, every_steps, every_epochs) == expected


def test_open_clip_trains_save_frequency_writes_every_nth_epoch_and_the_last(demo_train_spec, tmp_path):
    assert _train(demo_train_spec, tmp_path, "freq", "--train-num-samples", "16", "--epochs", "3",
                  "--save-frequency", "2") == 0
    assert _files(tmp_path / "freq") == ["epoch_2.pt", "epoch_3.pt", "epoch_latest.pt"]


def test_peak_counts_the_file_being_written():
    assert peak_checkpoints(32, 93, Retention(keep_step_checkpoints=0)) == 125
    assert peak_checkpoints(32, 93, Retention(keep_step_checkpoints=2)) == 35
    assert peak_checkpoints(32, 93, Retention(delete_previous_checkpoint=True)) == 2
    assert peak_checkpoints(1, 0, Retention(delete_previous_checkpoint=True)) == 1


def test_a_run_keeps_what_its_retention_says(demo_train_spec, tmp_path):
    """48 samples at batch 8: 6 steps, a checkpoint at every step."""
    assert _train(demo_train_spec, tmp_path, "default", "--save-every-steps", "1") == 0
    assert _files(tmp_path / "default") == ["epoch_1.pt", "epoch_latest.pt", "step_4.pt", "step_5.pt"]
    assert _train(demo_train_spec, tmp_path, "newest", "--save-every-steps", "1", "--delete-previous-checkpoint",
                  "--no-save-most-recent") == 0
    assert _files(tmp_path / "newest") == ["epoch_1.pt"]


def test_the_disk_check_counts_what_this_invocation_writes_and_names_the_retention_options(demo_train_spec, tmp_path,
                                                                                           capsys):
    """A billion epoch checkpoints cannot fit, and the sentence names the options that keep fewer; a billion-epoch
    run cut short by --stop-after-steps 2 needs only its two step checkpoints."""
    long = ("--epochs", "1000000000", "--stop-after-steps", "2", "--save-every-steps", "1")
    assert _train(demo_train_spec, tmp_path, "kept", *long, "--keep-step-checkpoints", "0") == 0
    assert _train(demo_train_spec, tmp_path, "all", "--epochs", "1000000000") == 1
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "--delete-previous-checkpoint" in err, err
    assert _files(tmp_path / "kept") == ["epoch_latest.pt", "step_1.pt", "step_2.pt"]
