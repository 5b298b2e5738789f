"""The GPU speed options of every training stage (--precision auto, --tf32, --fused-optimizer, --channels-last,
--torchcompile, --grad-checkpointing, --pin-memory): how they resolve per device, and that each one that can run
on CPU trains the same model as without it."""
from __future__ import annotations

import argparse
import copy
import json
import logging

import open_clip
import pytest
import torch
import yaml

from cifd_clip import config as config_lib
from cifd_clip.commands import train
from cifd_clip.engine.loop import apply_speed_settings, to_device
from cifd_clip.engine.options import TrainingOptions
from cifd_clip.engine.precision import resolve_speed_settings
from cifd_clip.engine.schedule import make_optimizer, set_fused
from cifd_clip.clip_models import compile_towers, is_convolutional

SPEED_FLAGS = ["--tf32", "--no-tf32", "--fused-optimizer", "--no-fused-optimizer", "--channels-last",
               "--no-channels-last", "--torchcompile", "--grad-checkpointing", "--pin-memory", "--no-pin-memory"]


def _run(spec, tmp_path, name, *extra, model="tiny-rn-student", steps=2):
    """A short `cifd-clip train` run; returns (per-step metrics, summary)."""
    args = ["--model", model, "--train-data", spec, "--batch-size", "6", "--workers", "0", "--warmup", "1",
            "--lr", "1e-3", "--logs", str(tmp_path), "--name", name, "--stop-after-steps", str(steps), *extra]
    assert train.run(config_lib.parse(train.Config, args)) == 0
    run = tmp_path / name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return metrics, json.loads((run / "summary.json").read_text())


def test_speed_options_are_flags_and_yaml_keys_of_every_training_stage(tmp_path):
    from cifd_clip.classify.options import ClassifyTrainOptions

    for options in (TrainingOptions, ClassifyTrainOptions):
        help_text = config_lib.build_parser(options, argparse.ArgumentParser()).format_help()
        assert all(flag in help_text for flag in SPEED_FLAGS), options
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"train_data": "x.tar", "model": "m", "tf32": False,
                                                     "fused_optimizer": True, "channels_last": True,
                                                     "torchcompile": True, "grad_checkpointing": True,
                                                     "pin_memory": False}))
    cfg = config_lib.resolve(TrainingOptions, {}, str(tmp_path / "c.yaml"))
    assert (cfg.tf32, cfg.fused_optimizer, cfg.channels_last, cfg.torchcompile, cfg.grad_checkpointing,
            cfg.pin_memory) == (False, True, True, True, True, False)
    defaults = config_lib.parse(TrainingOptions, ["--train-data", "x.tar", "--model", "m"])
    assert (defaults.precision, defaults.tf32, defaults.fused_optimizer, defaults.channels_last,
            defaults.torchcompile, defaults.grad_checkpointing, defaults.pin_memory) == \
        ("auto", True, None, None, False, False, None)


def test_defaults_resolve_to_todays_cpu_run_and_to_the_fast_gpu_run():
    cfg = config_lib.parse(TrainingOptions, ["--train-data", "x.tar", "--model", "m"])
    cpu = resolve_speed_settings(cfg, "cpu", convolutional=True)
    assert cpu.to_dict() == dict(precision="fp32", tf32=False, fused_optimizer=False, channels_last=False,
                                 torchcompile=False, grad_checkpointing=False, pin_memory=False)
    assert cpu.describe() == ("precision fp32, tf32 off, multi-tensor AdamW, channels_last off, compile off, "
                              "grad checkpointing off, pin memory off")
    # CUDA is only a device name here: resolving touches no GPU
    gpu = resolve_speed_settings(cfg, "cuda:0", convolutional=True, bf16_supported=True)
    assert gpu.to_dict() == dict(precision="amp_bf16", tf32=True, fused_optimizer=True, channels_last=True,
                                 torchcompile=False, grad_checkpointing=False, pin_memory=True)
    assert not resolve_speed_settings(cfg, "cuda", convolutional=False, bf16_supported=True).channels_last  # a ViT
    assert resolve_speed_settings(cfg, "cuda", convolutional=True, bf16_supported=False).precision == "amp"  # V100
    # asked for explicitly: honoured where the device has it, a logged no-op where it cannot apply
    forced = config_lib.parse(TrainingOptions, ["--train-data", "x.tar", "--model", "m", "--tf32", "--pin-memory",
                                                "--fused-optimizer", "--channels-last", "--grad-checkpointing"])
    on_cpu = resolve_speed_settings(forced, "cpu", convolutional=False, grad_checkpointing_ok=False)
    assert (on_cpu.tf32, on_cpu.pin_memory, on_cpu.channels_last, on_cpu.grad_checkpointing) == (False,) * 4
    assert on_cpu.fused_optimizer  # torch has a CPU kernel
    off = config_lib.parse(TrainingOptions, ["--train-data", "x.tar", "--model", "m", "--no-tf32",
                                             "--no-fused-optimizer", "--no-channels-last", "--no-pin-memory",
                                             "--precision", "fp32"])
    assert resolve_speed_settings(off, "cuda", convolutional=True, bf16_supported=True).to_dict() == \
        cpu.to_dict()


def _stage_dataloader(monkeypatch, command, argv):
    """The DataLoader a training stage builds and hands the loop (the loop itself is not run)."""
    from cifd_clip.engine import loop

    handed = []
    monkeypatch.setattr(loop, "fit", lambda module, data, *a, **k: handed.append(data) or {"steps": 0,
                                                                                         "samples_per_s": 0.0})
    assert command.run(config_lib.parse(command.Config, argv)) == 0
    return handed[0].dataloader


def test_the_resolved_pin_memory_reaches_the_dataloader_each_stage_builds(demo_train_spec, tmp_path, monkeypatch):
    """CLIP and classification stages build their DataLoader with --pin-memory as resolved for the run's device (off
    on this CPU; on with the resolution taking its CUDA branch, unless --no-pin-memory) and persistent workers."""
    from cifd_clip.classify.shapes import write_shapes_cifar
    from cifd_clip.commands import cls_train
    from cifd_clip.engine import precision

    write_shapes_cifar(tmp_path / "cls", train_samples=16, test_samples=4)
    stages = {"train": (train, ["--model", "tiny-rn-student", "--train-data", demo_train_spec]),
              "cls-train": (cls_train, ["--model", "cnn2", "--train-data", f"cifar100:{tmp_path / 'cls'}"])}
    resolve = precision.resolve_pin_memory
    for device in ("cpu", "cuda"):
        monkeypatch.setattr(precision, "resolve_pin_memory", lambda cfg, _device: resolve(cfg, device))
        for name, (command, args) in stages.items():
            common = [*args, "--workers", "1", "--batch-size", "4", "--logs", str(tmp_path / "runs")]
            loader = _stage_dataloader(monkeypatch, command, [*common, "--name", f"{name}-{device}"])
            assert (loader.pin_memory, loader.persistent_workers, loader.num_workers) == (device == "cuda", True, 1)
            loader = _stage_dataloader(monkeypatch, command, [*common, "--name", f"{name}-{device}-off",
                                                              "--no-pin-memory", "--no-persistent-workers"])
            assert (loader.pin_memory, loader.persistent_workers) == (False, False)


def test_the_loop_copies_as_the_loader_pins(demo_train_spec, student_transforms):
    """Pinned batches are copied without blocking; on CPU nothing is pinned, whatever the loader was built with."""
    from cifd_clip.data.loader import make_train_loader
    from cifd_clip.engine.loop import _as_the_loader_pins

    cfg = config_lib.parse(TrainingOptions, ["--train-data", "x.tar", "--model", "m"])
    preprocess, tokenizer = student_transforms
    for pin in (False, True):
        data = make_train_loader(demo_train_spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=4, workers=0,
                                 seed=0, pin_memory=pin)
        gpu = resolve_speed_settings(cfg, "cuda", convolutional=False, bf16_supported=True)
        assert _as_the_loader_pins(gpu, data, torch.device("cuda")).pin_memory is pin
        cpu = resolve_speed_settings(cfg, "cpu", convolutional=False)
        assert _as_the_loader_pins(cpu, data, torch.device("cpu")).pin_memory is False


def test_conv_students_are_told_apart_from_vits():
    assert is_convolutional(open_clip.create_model("tiny-rn-student"))
    assert not is_convolutional(open_clip.create_model("tiny-vit-student"))  # its patch embedding only


def test_channels_last_batches_are_converted_on_the_device_and_nothing_else_is():
    batch = {"image": torch.randn(2, 3, 8, 8), "text": torch.ones(2, 5, dtype=torch.long), "key": ["a", "b"],
             "t_image_emb": torch.randn(2, 4)}
    out = to_device(batch, torch.device("cpu"), channels_last=True)
    assert out["image"].is_contiguous(memory_format=torch.channels_last)
    assert not batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out["image"], batch["image"]) and out["key"] == ["a", "b"]
    assert out["text"].is_contiguous() and out["t_image_emb"].is_contiguous()
    plain = to_device(batch, torch.device("cpu"))
    assert not plain["image"].is_contiguous(memory_format=torch.channels_last)


def test_cpu_run_with_defaults_logs_its_settings_and_pins_nothing(demo_train_spec, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cifd_clip")
    _, summary = _run(demo_train_spec, tmp_path, "plain", steps=1)
    assert summary["precision"] == "fp32" and not any(summary["speed_settings"][k] for k in
                                                      ("tf32", "fused_optimizer", "channels_last", "torchcompile",
                                                       "grad_checkpointing", "pin_memory"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision ")]
    assert lines == ["precision fp32, tf32 off, multi-tensor AdamW, channels_last off, compile off, grad checkpointing "
                     "off, pin memory off"]


def test_channels_last_grad_checkpointing_and_fused_adamw_train_the_same_model(demo_train_spec, tmp_path):
    """An RN student (convolutional image tower, transformer text tower): channels_last, gradient checkpointing
    (its text tower; open_clip's ModifiedResNet has none) and the fused AdamW kernel, forced on CPU, give the
    losses and gradient norms of the plain run, step after step; tf32 and pinned memory resolve to off here."""
    base, _ = _run(demo_train_spec, tmp_path, "base", steps=3)
    fast, summary = _run(demo_train_spec, tmp_path, "fast", "--channels-last", "--grad-checkpointing",
                         "--fused-optimizer", "--tf32", "--pin-memory", steps=3)
    assert summary["speed_settings"] == dict(precision="fp32", tf32=False, fused_optimizer=True, channels_last=True,
                                             torchcompile=False, grad_checkpointing=True, pin_memory=False)
    assert [m["step"] for m in fast] == [1, 2, 3]
    for a, b in zip(base, fast):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    assert base[0]["loss"] != pytest.approx(base[-1]["loss"], rel=1e-4)  # the steps did change the weights


def test_grad_checkpointing_on_a_vit_recomputes_both_towers_and_keeps_the_gradients():
    torch.manual_seed(0)
    plain = open_clip.create_model("tiny-vit-student")
    checkpointed = open_clip.create_model("tiny-vit-student")
    checkpointed.load_state_dict(plain.state_dict())
    cfg = config_lib.parse(TrainingOptions, ["--train-data", "x.tar", "--model", "m", "--grad-checkpointing"])
    speed = resolve_speed_settings(cfg, "cpu", convolutional=False)
    apply_speed_settings(checkpointed, speed, torch.device("cpu"))
    assert checkpointed.visual.transformer.grad_checkpointing and checkpointed.transformer.grad_checkpointing
    images, tokens = torch.randn(3, 3, 48, 48), torch.randint(1, 400, (3, 24))
    grads = []
    for model in (plain, checkpointed):
        model.train()
        loss = (model.encode_image(images) @ model.encode_text(tokens).T).logsumexp(1).mean()
        loss.backward()
        grads.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-6)
    assert torch.allclose(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-7)


def test_resumed_optimizer_keeps_this_runs_fused_setting():
    """load_state_dict takes `fused` from the checkpoint; a checkpoint written unfused resumes fused (and the
    other way round) and continues with the same update."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    x = torch.randn(8, 4)

    def step(opt):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()

    unfused = make_optimizer(model, lr=1e-2, fused=False)
    step(unfused)
    saved_opt, saved_weights = copy.deepcopy(unfused.state_dict()), {k: v.clone() for k, v in model.state_dict().items()}
    step(unfused)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(saved_weights)
    fused = make_optimizer(model, lr=1e-2, fused=True)
    fused.load_state_dict(saved_opt)
    assert not any(g["fused"] for g in fused.param_groups)  # what torch does on its own
    set_fused(fused, True)
    assert all(g["fused"] and g["foreach"] is None for g in fused.param_groups)
    step(fused)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, expected[key], rtol=1e-5, atol=1e-7), key
    set_fused(fused, False)
    assert not any(g["fused"] for g in fused.param_groups) and all(g["foreach"] for g in fused.param_groups)
    step(fused)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_the_unfused_optimizer_is_torchs_multi_tensor_one_with_the_per_tensor_loops_results(kind):
    """On the CPU torch's default is a Python loop over the tensors; make_optimizer asks for the multi-tensor
    update, which must not move a single bit of a run's weights (the demo's and the studies' numbers)."""
    results = []
    for foreach in (False, True):
        torch.manual_seed(0)
        model = open_clip.create_model("tiny-vit-student")
        opt = make_optimizer(model, lr=1e-3, kind=kind)
        assert all(g["foreach"] for g in opt.param_groups)
        for group in opt.param_groups:
            group["foreach"] = foreach
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_compiling_in_place_keeps_the_state_dict_keys():
    model = open_clip.create_model("tiny-vit-student")
    keys = list(model.state_dict())
    assert compile_towers(model) == ["visual", "transformer"]
    assert list(model.state_dict()) == keys  # compiled lazily: nothing is traced yet


def test_torchcompile_run_writes_a_checkpoint_open_clip_loads(demo_train_spec, tmp_path):
    """--torchcompile through dynamo and AOT autograd; torch's own debug switch swaps inductor's C++ code generation
    (minutes on this CPU) for aot_eager, so the test covers the capture of the towers, not the kernels."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    try:
        with torch._dynamo.config.patch(debug_backend_override=">=0:aot_eager"):
            metrics, summary = _run(demo_train_spec, tmp_path, "compiled", "--torchcompile", model="tiny-vit-student")
        assert counters["stats"]["unique_graphs"] >= 2  # the image tower and the text tower were captured
    finally:
        torch._dynamo.reset()
    assert summary["speed_settings"]["torchcompile"] and len(metrics) == 2
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "step_2.pt", weights_only=True)
    keys = list(ckpt["state_dict"]) + list(ckpt["distill_state_dict"])
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys)
    model, _, _ = open_clip.create_model_and_transforms("tiny-vit-student",
                                                        pretrained=str(tmp_path / "compiled" / "checkpoints" /
                                                                       "step_2.pt"))
    assert torch.equal(model.state_dict()["logit_scale"], ckpt["state_dict"]["logit_scale"])


def test_bench_gpu_measures_the_three_steps_on_tiny_models():
    """benchmarks/bench_gpu.py's step, in this process at --quick sizes (its timings are not checked)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_gpu

    parser = argparse.ArgumentParser()
    bench_gpu._add_options(parser)
    args = parser.parse_args(["--quick", "--device", "cpu", "--batch-size", "4", "--steps", "1"])
    for variant in bench_gpu.VARIANTS:
        row = bench_gpu.measure("tiny-vit-student", bench_gpu.QUICK_TEACHER, variant, args)
        assert row["variant"] == variant and row["samples_per_s_per_gpu"] > 0 and row["peak_mem_mb"] > 0
        assert torch.isfinite(torch.tensor(row["loss"])) and row["speed_settings"]["precision"] == "fp32"


def test_tf32_switch_leaves_both_of_torchs_flag_apis_readable():
    """set_tf32 only sets flags (no GPU needed); afterwards the legacy allow_tf32 and the new fp32_precision both read
    back consistently (setting the new flags directly makes reading the legacy ones raise)."""
    from cifd_clip.engine.precision import set_tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    cpu_matmul = torch.backends.mkldnn.matmul.fp32_precision
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_matmul  # CPU matmuls are not touched
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[0]
        torch.backends.cudnn.allow_tf32 = before[1]
