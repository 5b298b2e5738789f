"""Shared test fixtures: one thread per test process and a tiny demo data set built once per session."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
# The stages that tests start as subprocesses (torchrun, the demos, the study) run on one thread too: two
# test workers on two cores, each starting a two-thread trainer, would oversubscribe the machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def tiny_model_configs():
    """Tests also build our tiny models through open_clip directly, by name."""
    from cifd_clip.clip_models import register_model_configs
    register_model_configs()

# Small enough to build in about a second; 8 equal train shards of 6 samples each, so that
# 2 ranks × 2 workers × batch 3 split an epoch exactly.
TINY_DEMO = dict(seed=0, train_samples=48, val_samples=12, zeroshot_samples=72, retrieval_samples=20,
                 image_size=48, samples_per_shard=6)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """A tiny demo data set (cifd_clip.data.shapes layout, settings in TINY_DEMO); treat it as read-only."""
    from cifd_clip.data.shapes import write_demo_data

    out = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(out, **TINY_DEMO)
    return out


@pytest.fixture(scope="session")
def demo_train_spec(demo_data_dir):
    """The shard spec of the tiny demo's train split: '.../train/{00000..00007}.tar'."""
    return str(demo_data_dir / "train" / "{00000..00007}.tar")


@pytest.fixture(scope="session")
def student_transforms():
    """(preprocess, tokenizer) of the tiny-vit-student config, without building the model."""
    import open_clip

    from cifd_clip.clip_models import register_model_configs

    register_model_configs()
    preprocess = open_clip.image_transform(48, is_train=False)
    return preprocess, open_clip.get_tokenizer("tiny-vit-student")


@pytest.fixture(scope="session")
def tiny_teacher_and_cache(demo_train_spec, tmp_path_factory):
    """(folder, teacher checkpoint): tiny-vit-teacher trained one epoch on the tiny demo, and its float32 embedding
    cache in FOLDER/cache; treat both as read-only (modules may add their own files to FOLDER)."""
    from cifd_clip.cli import main

    root = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--model", "tiny-vit-teacher", "--train-data", demo_train_spec, "--batch-size", "8",
                 "--workers", "0", "--warmup", "2", "--logs", str(root), "--name", "teacher"]) == 0
    teacher = root / "teacher" / "checkpoints" / "epoch_1.pt"
    assert main(["embed", "--teacher", str(teacher), "--train-data", demo_train_spec, "--out", str(root / "cache"),
                 "--dtype", "float32", "--workers", "0", "--batch-size", "16", "--device", "cpu"]) == 0
    return root, teacher
