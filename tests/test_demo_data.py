"""The demo data: reproducible from a seed, readable by our loader and by CLIP_benchmark, and a CLI stage."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifd_clip.data.shapes import CLASSNAMES, write_demo_data
from cifd_clip.data.shards import iter_samples

SMALL = dict(train_samples=10, val_samples=4, zeroshot_samples=40, retrieval_samples=6, image_size=32,
             samples_per_shard=4)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    write_demo_data(tmp_path / "a", seed=3, **SMALL)
    write_demo_data(tmp_path / "b", seed=3, **SMALL)
    write_demo_data(tmp_path / "c", seed=4, **SMALL)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["train/00000.tar"] != c["train/00000.tar"]


def test_layout_counts_and_captions(demo_data_dir):
    info = json.loads((demo_data_dir / "demo_info.json").read_text())
    assert info["splits"]["train"] == {"samples": 48, "shards": 8}
    assert json.loads((demo_data_dir / "train" / "sizes.json").read_text())["00003.tar"] == 6
    samples = list(iter_samples(str(demo_data_dir / info["val_data"])))
    assert len(samples) == 12 and samples[0]["image"].size == (48, 48)
    assert len({s["text"] for s in samples}) == 12  # scenes and phrasings vary
    words = " ".join(s["text"] for s in iter_samples(str(demo_data_dir / info["train_data"])))
    for detail in ("small", "large", "striped", "left", "top"):
        assert detail in words
    assert len(CLASSNAMES) == 36 and (demo_data_dir / "zeroshot" / "classnames.txt").read_text().split("\n")[:2] == \
        ["red circle", "green circle"]


def test_clip_benchmark_reads_the_zeroshot_and_retrieval_sets(demo_data_dir):
    from clip_benchmark.datasets.builder import build_dataset
    import torchvision.transforms as T

    transform = T.Compose([T.Resize(32), T.ToTensor()])
    zs = build_dataset("wds/demo", root=str(demo_data_dir / "zeroshot"), transform=transform, download=False,
                       task="zeroshot_classification")
    assert len(zs.classes) == 36 and all("{c}" in t for t in zs.templates)
    labels = [int(label) for _, label in zs]
    assert sorted(labels) == sorted(list(range(36)) * 2)
    rt = build_dataset("wds/demo", root=str(demo_data_dir / "retrieval"), transform=transform, download=False,
                       task="zeroshot_retrieval")
    pairs = list(rt)
    assert len(pairs) == 20 and all(len(texts) == 5 and isinstance(img, torch.Tensor) for img, texts in pairs)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cifd_clip", "make-demo-data", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_the_data_and_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "demo"
    result = _cli("--out", str(out), "--train-samples", "8", "--val-samples", "4", "--zeroshot-samples", "36",
                  "--retrieval-samples", "4", "--image-size", "32", "--samples-per-shard", "4")
    assert result.returncode == 0, result.stderr
    assert "train 8 samples in 2 shards" in result.stdout
    assert sorted(p.name for p in (out / "train").iterdir()) == ["00000.tar", "00001.tar", "sizes.json"]
    assert (out / "make_demo_data.yaml").is_file() and (out / "zeroshot" / "test" / "nshards.txt").read_text() == "9\n"

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    result = _cli("--out", str(foreign))
    assert result.returncode == 1 and "is not empty and holds no demo data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and (foreign / "chapter1.tex").read_text() == "precious"


def test_training_captions_mix_short_colour_and_kind_ones_with_detailed_ones(tmp_path):
    from cifd_clip.data.shapes import SHAPES, caption_samples

    texts = [s["txt"] for s in caption_samples("train", 200, seed=0, image_size=16)]
    short = [t for t in texts if not {"small", "large"} & set(t.split()) and t.rstrip(".").split()[-1] in SHAPES]
    # without short captions a tiny CLIP separates a batch by colour, size, fill and position and never learns shapes
    assert 0.5 < len(short) / len(texts) < 0.9
    assert sum("striped" in t or "corner" in t for t in texts) > 10
    assert "an orange" in " ".join(texts) and "a orange" not in " ".join(texts)
