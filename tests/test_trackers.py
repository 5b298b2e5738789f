"""--report-to with the real trackers: TensorBoard's event files and wandb offline's run folder read back, with
open_clip_train's train/ and val/ tags, the run's name and config, evaluation during training included."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cifd_clip.cli import main
from cifd_clip.engine.trackers import parse_report_to, train_tags, val_tags
from cifd_clip.errors import ConfigError


def _train(spec, data, logs, name, *extra):
    return main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--batch-size", "8", "--workers", "0",
                 "--warmup", "1", "--train-num-samples", "16", "--epochs", "2", "--logs", str(logs), "--name", name,
                 "--eval-every-epochs", "2", "--eval-datasets", "zeroshot", "retrieval", "--eval-dataset-root",
                 str(data), *extra])


@pytest.fixture(scope="module")
def tracked_run(demo_train_spec, demo_data_dir, tmp_path_factory):
    """2 steps per epoch, 2 epochs, evaluated at the end; stopped after step 3 and resumed, reporting to both."""
    root = tmp_path_factory.mktemp("tracked")
    env = pytest.MonkeyPatch()
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                       "WANDB_CONFIG_DIR": root / "wandb-config",
                       "WANDB_CACHE_DIR": root / "wandb-cache", "WANDB_DATA_DIR": root / "wandb-data"}.items():
        env.setenv(key, str(value))
    try:
        assert _train(demo_train_spec, demo_data_dir, root, "run", "--report-to", "all", "--stop-after-steps", "3") == 0
        assert _train(demo_train_spec, demo_data_dir, root, "run", "--report-to", "tensorboard,wandb",
                      "--resume", "latest") == 0
    finally:
        env.undo()
    return root / "run"


def test_report_to_spellings():
    assert parse_report_to("none") == [] and parse_report_to("") == []
    assert parse_report_to("all") == parse_report_to("wandb,tensorboard") == ["tensorboard", "wandb"]
    assert parse_report_to("tensorboard") == ["tensorboard"]
    with pytest.raises(ConfigError, match="'mlflow' is not a tracker"):
        parse_report_to("tensorboard,mlflow")


def test_tag_names_are_open_clip_trains():
    assert train_tags({"step": 4, "epoch": 1, "lr": 0.1, "samples_per_s": 9.0, "loss": 2.0, "contrastive": 2.0,
                       "skipped_nonfinite": "term 'x'"}) == {
        "train/epoch": 1.0, "train/lr": 0.1, "train/samples_per_second": 9.0, "train/loss": 2.0,
        "train/contrastive": 2.0}
    assert val_tags({"imagenet": {"metrics": {"acc1": 0.5, "acc5": None}, "seconds": 3.0},
                     "val": {"metrics": {"acc1": 0.25}}}) == {"val/imagenet/acc1": 0.5, "val/acc1": 0.25}


def _tensorboard_scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def test_tensorboard_event_files_hold_train_and_val_scalars(tracked_run):
    scalars = _tensorboard_scalars(tracked_run / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]  # 3 before the stop, 1 after the resume
    for tag in ("train/lr", "train/samples_per_second", "train/grad_norm", "train/contrastive"):
        assert len(scalars[tag]) == 4, tag
    metrics = [json.loads(line) for line in (tracked_run / "metrics.jsonl").read_text().splitlines()]
    evaluated = next(m["eval"] for m in metrics if "eval" in m)
    assert scalars["val/zeroshot/acc1"] == [(4, pytest.approx(evaluated["zeroshot"]["metrics"]["acc1"]))]
    assert scalars["val/retrieval/image_retrieval_recall@1"][0][0] == 4
    assert scalars["val/epoch"] == [(4, 2.0)]


def _wandb_records(run_file: Path) -> list:
    """The protobuf records of a `.wandb` file (W&B's LevelDB-log layout: a 7-byte file header, then 32 kB blocks
    of records, each with a 7-byte header: checksum, length, kind = full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            records.append(record)
        pending = chunk if kind == 2 else pending + chunk if kind == 3 else b""
    return records


def test_wandb_offline_run_folders_hold_the_name_the_config_and_the_scalars(tracked_run):
    folders = sorted((tracked_run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # the first invocation and the resumed one, both run id "run": wandb sync joins them
    history: dict = {}
    for folder in folders:
        assert folder.name.endswith("-run")
        records = _wandb_records(next(folder.glob("run-*.wandb")))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.display_name == "run" and run.run_id == "run" and run.project == "cifd-clip"
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["lr"] == 5e-4 and config["model"] == "tiny-vit-student" and config["report_to"] != "none"
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for key, value in items.items():
                    history.setdefault(key, []).append((r.history.step.num, value))
    assert [step for step, _ in history["train/loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in history["val/zeroshot/acc1"]] == [4]
    assert "val/retrieval/text_retrieval_recall@5" in history
