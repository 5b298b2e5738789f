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
    from cifd_clip.towers import register_model_configs
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

    from cifd_clip.towers import register_model_configs

    register_model_configs()
    preprocess = open_clip.image_transform(48, is_train=False)
    return preprocess, open_clip.get_tokenizer("tiny-vit-student")
