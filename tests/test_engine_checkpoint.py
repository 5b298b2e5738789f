"""Checkpoint contract and optimizer/schedule defaults of the training engine."""
from __future__ import annotations

import math

import open_clip
import pytest
import torch

from cifd_clip.cli import main
from cifd_clip.engine import checkpoint as ckpt_lib
from cifd_clip.engine.schedule import WarmupCosine, make_optimizer
from cifd_clip.errors import UserError


def _train(spec, logs, name, *extra):
    return main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--batch-size", "8",
                 "--workers", "0", "--warmup", "2", "--logs", str(logs), "--name", name, *extra])


@pytest.fixture(scope="module")
def trained_run(demo_train_spec, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    assert _train(demo_train_spec, logs, "run", "--save-every-steps", "2") == 0
    return logs / "run"


def test_checkpoint_loads_with_weights_only_and_holds_the_contract(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    for key in ("epoch", "step", "name", "model_name", "model_cfg", "preprocess_cfg", "state_dict",
                "distill_state_dict", "optimizer", "scheduler", "rng", "config"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 1 and ckpt["step"] == 6 and ckpt["name"] == "run"
    assert ckpt["model_name"] == "tiny-vit-student" and ckpt["config"]["batch_size"] == 8
    assert not any(k.startswith(("module.", "_orig_mod.", "student.")) for k in ckpt["state_dict"])
    assert (trained_run / "checkpoints" / "step_2.pt").is_file() and (trained_run / "checkpoints" / "step_4.pt").is_file()


def test_open_clip_loads_the_student_from_the_checkpoint_file(trained_run):
    path = trained_run / "checkpoints" / "epoch_1.pt"
    model, _, _ = open_clip.create_model_and_transforms("tiny-vit-student", pretrained=str(path))
    saved = torch.load(path, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_resume_latest_finds_the_newest_checkpoint(trained_run, tmp_path):
    assert ckpt_lib.resolve_resume("latest", trained_run).name == "epoch_latest.pt"
    latest = torch.load(ckpt_lib.resolve_resume("latest", trained_run), weights_only=True)
    assert latest["step"] == 6
    assert ckpt_lib.resolve_resume("latest", tmp_path) is None  # fresh run: start from scratch
    with pytest.raises(UserError, match="no such checkpoint"):
        ckpt_lib.resolve_resume(str(tmp_path / "nope.pt"), tmp_path)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np
    state = ckpt_lib.rng_state()
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.save({"rng": state}, tmp_path / "r.pt")
    ckpt_lib.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_nan_weights_are_never_written(tmp_path):
    ckpt = {"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "distill_state_dict": {}}
    with pytest.raises(UserError, match="NaN"):
        ckpt_lib.save_atomic(ckpt, tmp_path / "x.pt")
    assert not any(tmp_path.iterdir())


def test_optimizer_groups_follow_open_clip():
    from cifd_clip.core.ibm import InformationBottleneck, IsometricDecoder, make_decoder
    from cifd_clip.clip_models import load_model
    model = torch.nn.ModuleDict({"student": load_model("tiny-vit-student").model,
                                 "ibm": InformationBottleneck(64), "decoder": make_decoder(64, 128),
                                 "isometric": IsometricDecoder(64, 128)})
    opt = make_optimizer(model)
    no_decay, decay = opt.param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6 and opt.defaults["lr"] == 5e-4
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "student.logit_scale" not in decayed
    assert not any("bias" in n or "ln_" in n or "density" in n for n in decayed)
    assert "student.visual.conv1.weight" in decayed and "decoder.weight" in decayed
    assert not any("parametrizations" in n for n in decayed)  # an orthogonal map's generator


def test_warmup_then_cosine_to_zero():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, warmup_steps=4, total_steps=14)
    lrs = [sched.step(s) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(lrs[9], 0.5, abs_tol=1e-9) and lrs[-1] < 0.03
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_warmup_is_a_fraction_of_the_run_by_default_or_a_number_of_steps():
    from cifd_clip.commands.train import Config
    from cifd_clip.config import parse
    from cifd_clip.errors import ConfigError

    base = ["--train-data", "x.tar", "--model", "m"]
    assert parse(Config, base).warmup_steps(625) == 62  # the default follows the run's length
    assert parse(Config, [*base, "--warmup", "0.25"]).warmup_steps(400) == 100
    assert parse(Config, [*base, "--warmup", "60"]).warmup_steps(400) == 60
    for bad in ("1.5", "-1", "nan"):
        with pytest.raises(ConfigError, match="--warmup"):
            parse(Config, [*base, "--warmup", bad])


def test_step_schedule_and_sgd_for_the_classification_recipes():
    from cifd_clip.commands.train import Config
    from cifd_clip.config import parse
    from cifd_clip.engine.schedule import make_schedule
    from cifd_clip.errors import ConfigError

    base = ["--train-data", "x.tar", "--model", "m", "--epochs", "4", "--optimizer", "sgd", "--lr", "0.1"]
    cfg = parse(Config, [*base, "--lr-schedule", "step", "--lr-decay-epochs", "2", "3", "--warmup", "0"])
    opt = make_optimizer(torch.nn.Linear(2, 2), cfg.lr, cfg.wd, kind=cfg.optimizer, momentum=cfg.momentum)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    sched = make_schedule(opt, cfg, total_steps=40, steps_per_epoch=10)
    lrs = [sched.step(s) for s in range(40)]
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="--lr-decay-epochs"):
        parse(Config, [*base, "--lr-schedule", "step"])
    with pytest.raises(ConfigError, match="within the run"):
        parse(Config, [*base, "--lr-schedule", "step", "--lr-decay-epochs", "9"])
