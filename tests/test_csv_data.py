"""open_clip_train's CSV datasets: train, embed and distill read one CSV as its shards, made once beside it."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from cifd_clip.cli import main
from cifd_clip.errors import UserError


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    """24 images with captions in open_clip_train's default layout (tab-separated, filepath / title)."""
    root = tmp_path_factory.mktemp("csv")
    (root / "images").mkdir()
    rows = ["filepath\ttitle"]
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    for i in range(24):
        name = list(colours)[i % 3]
        Image.new("RGB", (48, 48), colours[name]).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png\ta {name} square number {i}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def test_train_embed_and_distill_read_one_csv(csv_file, tmp_path):
    common = ["--train-data", str(csv_file), "--batch-size", "8", "--workers", "0", "--warmup", "1",
              "--logs", str(tmp_path)]
    assert main(["train", "--model", "tiny-vit-teacher", *common, "--name", "teacher"]) == 0
    shards = csv_file.parent / "train.csv.shards"
    assert json.loads((shards / "sizes.json").read_text()) == {"00000.tar": 24}
    summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["bad_samples"]["good"] == 24
    teacher = tmp_path / "teacher" / "checkpoints" / "epoch_1.pt"
    assert main(["embed", "--teacher", str(teacher), "--train-data", str(csv_file), "--out", str(tmp_path / "cache"),
                 "--workers", "0", "--batch-size", "8"]) == 0
    # distill joins the cache by the CSV's shards: the same shard names and keys as embed read
    assert main(["distill", "--model", "tiny-vit-student", "--loss", "clipkd", "--cache", str(tmp_path / "cache"),
                 *common, "--name", "student", "--dataset-type", "csv", "--csv-separator", "\\t"]) == 0
    config = (tmp_path / "student" / "config.yaml").read_text()
    assert "train.csv.shards/00000.tar" in config and "dataset_type: webdataset" in config  # a resume reads shards


def test_a_multi_process_run_needs_the_shards_made_first(csv_file, tmp_path):
    from cifd_clip.commands.train import Config
    from cifd_clip.config import parse
    from cifd_clip.data.csv_source import resolve_csv_train_data

    cfg = parse(Config, ["--model", "tiny-vit-student", "--train-data", str(csv_file), "--csv-shards",
                         str(tmp_path / "not-yet")])
    with pytest.raises(UserError, match="cannot write .* shards: make them first with `cifd-clip make-shards"):
        resolve_csv_train_data(cfg, world_size=2)
