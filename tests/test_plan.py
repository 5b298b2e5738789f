"""`cifd-clip plan`: FLOPs counted on the real modules agree with a count by hand, and a recipe's plan puts the
CIFD pipeline below plain KD and TAKD on the same student."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifd_clip import cli
from cifd_clip.plan import count as counting
from cifd_clip.plan.estimate import _forward, _train_step, cache_bytes_per_sample

REPO = Path(__file__).resolve().parents[1]


def transformer_macs(tokens: int, width: int, layers: int) -> int:
    """Per block: q, k, v and output projections (4·n·d²), the MLP (2·n·d·4d) and attention (QKᵀ, ·V: 2·n²·d)."""
    return layers * (12 * tokens * width ** 2 + 2 * tokens ** 2 * width)


def test_flops_of_a_tiny_vit_agree_with_a_count_by_hand():
    # tiny-vit-teacher: 64 px, 8 px patches (64 + 1 tokens), width 192, 5 layers, embed 128;
    # text: 32 tokens, width 128, 3 layers
    patch_embed = 64 * (3 * 8 * 8) * 192
    image = patch_embed + transformer_macs(65, 192, 5) + 192 * 128  # + the projection of the class token
    text = transformer_macs(32, 128, 3) + 128 * 128  # + the projection of the end-of-text token
    image_count, text_count = _forward("tiny-vit-teacher")
    assert image_count.flops == 2 * image
    assert text_count.flops == 2 * text
    # training: forward + backward (twice the forward: gradients of inputs and of weights), except that the
    # images need no gradient, so the patch embedding's backward is the weight gradient alone
    assert _train_step("tiny-vit-teacher").flops == 2 * (3 * (image + text) - patch_embed)


def test_live_memory_grows_with_the_batch_and_training_holds_more_than_a_forward():
    image, _ = _forward("tiny-vit-teacher")
    step = _train_step("tiny-vit-teacher")
    assert 0 < image.live_bytes < step.live_bytes
    assert step.peak_bytes(64) > step.peak_bytes(8) > 0
    assert step.fixed_bytes >= 4 * counting.parameter_count(counting.meta_clip("tiny-vit-teacher")) * 0.5


def test_the_cache_size_per_sample_is_what_the_writer_writes():
    # one 768-d view in float16 = 1536 bytes plus its npy header, padded to 512-byte tar blocks, and the same
    # for the text embedding: a tar header and 2048 bytes for each
    assert cache_bytes_per_sample(768, 768, 1, "float16") == pytest.approx(2 * (512 + 2048), abs=64)
    assert cache_bytes_per_sample(768, 768, 4, "float16") > 2 * cache_bytes_per_sample(768, 768, 1, "float16")


def test_plan_of_a_recipe_prints_every_step_and_cifd_below_kd_and_takd(tmp_path, capsys):
    out = tmp_path / "plan.json"
    # the paper recipe with tiny stand-ins for its models, so that counting takes a moment
    argv = ["plan", "--recipe", str(REPO / "recipes/clip/vitl14-vits16.yaml"), "--var", "teacher=tiny-vit-teacher",
            "student=tiny-vit-student", "assistant=tiny-vit-ta", "--gpu", "h100", "--mfu", "0.5", "--json-out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    plan = json.loads(out.read_text())
    names = [s["name"] for s in plan["steps"]]
    assert names == ["embed", "rdm", "cifd", "nokd", "kd", "clipkd", "tinyclip", "bench", "export"]
    for name in names:
        assert f"| {name} |" in printed
    steps = {s["name"]: s for s in plan["steps"]}
    student = _train_step("tiny-vit-student").flops
    assert steps["nokd"]["flops"] == pytest.approx(32 * 3e6 * student)  # 32 epochs of 3M samples
    assert steps["embed"]["disk_gib"] > 0 and steps["embed"]["samples"] == 1e7
    assert steps["cifd"]["gpu_hours"] == pytest.approx(steps["cifd"]["flops"] / (989e12 * 0.5) / 3600)
    rows = {row["name"]: row for row in plan["comparison"]}
    assert rows["CIFD"]["flops"] < rows["plain KD"]["flops"] < rows["TAKD-style"]["flops"]
    assert rows["CIFD"]["memory_gib"] < rows["plain KD"]["memory_gib"]
    assert "× plain KD" in printed


def test_plan_prints_the_disk_of_the_cache_and_of_the_checkpoints_its_retention_keeps(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(REPO / "recipes/clip/vitl14-vits16.yaml"), "--var", "teacher=tiny-vit-teacher",
            "student=tiny-vit-student", "assistant=tiny-vit-ta", f"out={tmp_path / 'run'}", "--json-out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    plan = json.loads(out.read_text())
    steps = {s["name"]: s for s in plan["steps"]}
    per_checkpoint = counting.parameter_count(counting.meta_clip("tiny-vit-student")) * 12 / 1024 ** 3
    # 32 epochs of 2929 steps (3M samples at 4 x 256) and a step checkpoint every 1000: 125 written; the recipe's
    # --delete-previous-checkpoint keeps the newest, and the one being written makes two at once
    for name in ("cifd", "nokd", "kd", "clipkd", "tinyclip"):
        assert steps[name]["disk_gib"] == pytest.approx(2 * per_checkpoint), name
        assert "2 of its 125 checkpoints at once" in steps[name]["disk_what"]
    assert plan["disk_gib"] == pytest.approx(sum(s["disk_gib"] or 0 for s in plan["steps"]))
    assert plan["out"] == str(tmp_path / "run") and plan["free_gib"] > 0
    assert f"under {tmp_path / 'run'}, where" in printed and "it fits" in printed
    assert "- embed:" in printed and "the embedding cache" in printed and "keeping the newest checkpoint only" in printed
    # without the recipe's retention: every epoch checkpoint and 2 step checkpoints (+ the one being written)
    from cifd_clip.launch.recipe import load_recipe
    from cifd_clip.plan.estimate import Planner
    loaded = load_recipe(REPO / "recipes/clip/vitl14-vits16.yaml", {"student": "tiny-vit-student"})
    step = loaded.step("cifd")
    step.options.pop("delete_previous_checkpoint")
    disk, what = Planner(loaded, gpu="a100", mfu=0.4, gpus=4).checkpoint_disk(step)
    assert disk == pytest.approx(35 * per_checkpoint) and "35 of its 125" in what


def test_plan_refuses_what_it_cannot_size(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("vars: {out: x}\nsteps:\n  - {name: s, stage: train, options: {model: tiny-vit-student, "
                      "train_data: x.tar}}\n")
    assert cli.main(["plan", "--recipe", str(recipe)]) == 2
    assert "needs the number of samples" in capsys.readouterr().err
    recipe.write_text("vars: {out: x}\nsteps:\n  - {name: s, stage: train, options: {model: no-such-model, "
                      "train_data: x.tar, train_num_samples: 10}}\n")
    assert cli.main(["plan", "--recipe", str(recipe)]) == 1
    assert "cannot size model 'no-such-model'" in capsys.readouterr().err
