"""An interrupted-and-resumed run ends with the same weights as an uninterrupted one; NaN handling."""
from __future__ import annotations

import json

import pytest
import torch

from cifd_clip.cli import main
from cifd_clip.engine.loop import NonFiniteLoss


def _train(spec, logs, name, *extra):
    return main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--batch-size", "4",
                 "--workers", "0", "--warmup", "2", "--epochs", "2", "--logs", str(logs), "--name", name, *extra])


def _weights(run_dir, file="epoch_2.pt"):
    return torch.load(run_dir / "checkpoints" / file, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_stop_mid_epoch_and_resume_reaches_the_same_weights(demo_train_spec, tmp_path):
    # accum-freq 2 and 6 steps per epoch: the stop at step 9 lies mid-epoch and mid-data
    assert _train(demo_train_spec, tmp_path, "full", "--accum-freq", "2") == 0
    assert _train(demo_train_spec, tmp_path, "cut", "--accum-freq", "2", "--stop-after-steps", "9") == 0
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] == 9
    assert not (tmp_path / "cut" / "checkpoints" / "epoch_2.pt").exists()
    assert _train(demo_train_spec, tmp_path, "cut", "--accum-freq", "2", "--resume", "latest") == 0
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


@pytest.mark.slow
def test_persistent_workers_train_what_fresh_workers_train_and_resume_exactly(demo_train_spec, tmp_path):
    """One loader worker kept from epoch to epoch (the default) against one started afresh each epoch: the same
    weights after 2 epochs of 6 steps, and after a stop at step 9 (mid-epoch 2) and a resume."""
    one_worker = ("--workers", "1", "--train-num-samples", "24")
    assert _train(demo_train_spec, tmp_path, "fresh", *one_worker, "--no-persistent-workers") == 0
    assert _train(demo_train_spec, tmp_path, "kept", *one_worker) == 0
    assert _train(demo_train_spec, tmp_path, "cut", *one_worker, "--stop-after-steps", "9") == 0
    assert _train(demo_train_spec, tmp_path, "cut", *one_worker, "--resume", "latest") == 0
    fresh = _weights(tmp_path / "fresh")
    for name in ("kept", "cut"):
        weights = _weights(tmp_path / name)
        assert weights.keys() == fresh.keys() and all(torch.equal(fresh[k], weights[k]) for k in fresh), name


@pytest.mark.parametrize("retention", [
    ("--save-every-steps", "2", "--delete-previous-checkpoint"),  # the newest only, through epoch_latest.pt
    ("--save-every-steps", "1", "--keep-step-checkpoints", "1", "--no-save-most-recent"),  # found by its name
])
def test_a_resume_after_retention_deleted_checkpoints_reaches_the_same_weights(demo_train_spec, tmp_path, retention):
    """4 steps per epoch, 2 epochs; the cut run stops at step 7 (mid-epoch 2) after retention deleted the earlier
    checkpoints, and its resume ends where the uninterrupted run does."""
    short = ("--train-num-samples", "16")
    assert _train(demo_train_spec, tmp_path, "full", *short) == 0
    assert _train(demo_train_spec, tmp_path, "cut", *short, *retention, "--stop-after-steps", "7") == 0
    left = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("*.pt"))
    assert left == (["epoch_latest.pt", "step_7.pt"] if "--delete-previous-checkpoint" in retention
                    else ["epoch_1.pt", "step_7.pt"])
    assert _train(demo_train_spec, tmp_path, "cut", *short, *retention, "--resume", "latest") == 0
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_rerunning_into_a_finished_run_needs_resume(demo_train_spec, tmp_path, capsys):
    assert _train(demo_train_spec, tmp_path, "r", "--epochs", "1") == 0
    assert _train(demo_train_spec, tmp_path, "r", "--epochs", "1") == 1
    assert "--resume latest" in capsys.readouterr().err


def _train_with_nan_at(bad_step, spec, logs, name, *extra):
    """What `cifd-clip train` runs, with a student whose contrastive term turns NaN at one optimizer step
    (the fault is injected here, in the test, not by a hook in the loop)."""
    from cifd_clip.commands.train import Config
    from cifd_clip.config import parse
    from cifd_clip.distill.distiller import Distiller
    from cifd_clip.distill.settings import LossSettings
    from cifd_clip.engine import session
    from cifd_clip.engine.loop import fit, seed_everything
    from cifd_clip.clip_models import load_model

    class NaNAtStep(Distiller):
        def begin_step(self, step, total_steps=None):
            super().begin_step(step, total_steps)
            self.current = step

        def forward(self, batch):
            terms = super().forward(batch)
            if self.current == bad_step:
                terms["contrastive"] = terms["contrastive"] * float("nan")
            return terms

    cfg = parse(Config, ["--model", "tiny-vit-student", "--train-data", spec, "--batch-size", "4", "--workers", "0",
                         "--warmup", "2", "--epochs", "2", "--logs", str(logs), "--name", name, *extra])
    env, run_dir = session.start_run(cfg)
    seed_everything(cfg.seed)
    tower = load_model(cfg.model)
    module = NaNAtStep.build(tower.model, LossSettings(loss="contrastive"), student_dim=tower.embed_dim)
    return fit(module, session.build_loader(cfg, tower, env), cfg, env, run_dir, describe=session.describe(tower, cfg))


def test_nan_loss_stops_the_run_naming_step_and_term(demo_train_spec, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"at step 3 \(epoch 0\) in term 'contrastive'"):
        _train_with_nan_at(3, demo_train_spec, tmp_path, "nan", "--save-every-steps", "1",
                           "--keep-step-checkpoints", "0")
    saved = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").glob("step_*.pt"))
    assert saved == ["step_1.pt", "step_2.pt", "step_3.pt"]  # step_3 = state after 3 good steps
    for p in (tmp_path / "nan" / "checkpoints").glob("*.pt"):
        sd = torch.load(p, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def test_skip_nonfinite_skips_only_the_bad_step(demo_train_spec, tmp_path):
    _train_with_nan_at(3, demo_train_spec, tmp_path, "skip", "--skip-nonfinite", "--epochs", "1")
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped_nonfinite_steps"] == 1 and summary["steps"] == 12
    lines = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "skipped_nonfinite" in r] == [3]
    sd = _weights(tmp_path / "skip", "epoch_1.pt")
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
