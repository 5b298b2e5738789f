"""Bad data is skipped and counted by reason (with shard and key), and too much of it stops the run."""
from __future__ import annotations

import json

import pytest

from cifd_clip.data.loader import make_train_loader
from cifd_clip.data.shards import BadSampleStats, iter_raw_samples, iter_samples, write_shard
from cifd_clip.errors import DataError


def _good_samples(demo_data_dir, shard="00000.tar"):
    return list(iter_raw_samples(str(demo_data_dir / "train" / shard)))


def _member_dict(raw, key=None):
    return {"__key__": key or raw["__key__"], **{k: v for k, v in raw.items() if not k.startswith("__")}}


def _bad_shards(tmp_path, demo_data_dir):
    """Four shards: one with each per-sample defect, one truncated, two clean (6 good samples each)."""
    good = [_member_dict(r) for r in _good_samples(demo_data_dir)]
    defects = [
        {**_member_dict(good[0], "bad_image"), "jpg": b"\xff\xd8 not really a jpeg"},
        {k: v for k, v in _member_dict(good[1], "no_caption").items() if k != "txt"},
        {k: v for k, v in _member_dict(good[2], "no_image").items() if k != "jpg"},
        {**_member_dict(good[3], "blank_caption"), "txt": "   "},
        _member_dict(good[4]),  # the same key again, further down the shard
    ]
    write_shard(tmp_path / "0.tar", good[:2] + defects[:2] + good[2:4] + defects[2:] + good[4:])
    write_shard(tmp_path / "1.tar", [_member_dict(r, f"one{i}") for i, r in enumerate(good)])
    write_shard(tmp_path / "2.tar", [_member_dict(r, f"two{i}") for i, r in enumerate(good)])
    data = (tmp_path / "2.tar").read_bytes()
    (tmp_path / "2.tar").write_bytes(data[: len(data) // 2])
    write_shard(tmp_path / "3.tar", [_member_dict(r, f"three{i}") for i, r in enumerate(good)])
    return str(tmp_path / "{0..3}.tar")


def test_each_kind_of_bad_data_is_skipped_and_counted(tmp_path, demo_data_dir):
    spec = _bad_shards(tmp_path, demo_data_dir)
    stats = BadSampleStats()
    samples = list(iter_samples(spec, stats=stats))
    keys = [s["key"] for s in samples]
    assert len(keys) == len(set(keys)) and keys[:6] == [f"{i:09d}" for i in range(6)]
    assert stats.counts == {"undecodable_image": 1, "missing_caption": 2, "missing_image": 1,
                            "duplicate_key": 1, "unreadable_shard": 1}
    assert stats.examples["undecodable_image"][0]["key"] == "bad_image"
    assert stats.examples["duplicate_key"][0]["key"] == "000000004"
    assert stats.examples["unreadable_shard"][0]["shard"].endswith("2.tar")
    assert 0 < sum(k.startswith("two") for k in keys) < 6  # samples before the damage are kept
    assert stats.good == len(samples)


def test_bad_counts_from_worker_processes_reach_the_loader(tmp_path, demo_data_dir, student_transforms):
    spec = _bad_shards(tmp_path, demo_data_dir)
    preprocess, tokenizer = student_transforms
    info = make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=2, workers=2, seed=0,
                             num_samples=40, max_bad_fraction=0.5)  # quotas exceed the good samples: every shard is read
    batches = list(info.iterate(0))
    assert len(batches) == 20
    report = info.bad_report()
    assert set(report["counts"]) == {"undecodable_image", "missing_caption", "missing_image", "duplicate_key",
                                     "unreadable_shard"}
    assert report["good"] >= 40 and report["bad"] >= 6
    assert any(e["key"] == "no_image" for e in report["examples"]["missing_image"])


def test_too_much_bad_data_stops_the_run_with_a_summary(tmp_path, demo_data_dir, student_transforms):
    spec = _bad_shards(tmp_path, demo_data_dir)
    preprocess, tokenizer = student_transforms
    info = make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=2, workers=0, seed=0,
                             num_samples=20)
    with pytest.raises(DataError, match=r"more than the allowed 5% .*undecodable_image=1"):
        list(info.iterate(0))


def test_shards_without_any_usable_sample_raise_instead_of_hanging(tmp_path, demo_data_dir, student_transforms):
    raw = _good_samples(demo_data_dir)
    for n in range(2):
        write_shard(tmp_path / f"{n}.tar", [{**_member_dict(r, f"s{n}x{i}"), "jpg": b"broken"} for i, r in enumerate(raw)])
    preprocess, tokenizer = student_transforms
    info = make_train_loader(str(tmp_path / "{0..1}.tar"), preprocess=preprocess, tokenizer=tokenizer,
                             batch_size=2, workers=2, seed=0, num_samples=8)
    with pytest.raises(DataError, match="hold no usable sample") as caught:
        list(info.iterate(0))
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def _corrupt_copy(tmp_path, demo_data_dir, bad_per_shard: int) -> str:
    """The tiny demo's 8 train shards (6 samples each), with `bad_per_shard` undecodable images added to each."""
    for n in range(8):
        raw = _good_samples(demo_data_dir, f"{n:05d}.tar")
        bad = [{**_member_dict(raw[i % len(raw)], f"bad{n}x{i}"), "jpg": b"broken"} for i in range(bad_per_shard)]
        write_shard(tmp_path / f"{n}.tar", [_member_dict(r) for r in raw] + bad)
    return str(tmp_path / "{0..7}.tar")


def test_a_run_over_lightly_corrupted_shards_reports_them_in_its_log(tmp_path, demo_data_dir, caplog):
    from cifd_clip.cli import main
    spec = _corrupt_copy(tmp_path / "data", demo_data_dir, bad_per_shard=1)  # 8 bad of 56 read, under 20%
    code = main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--train-num-samples", "48",
                 "--batch-size", "8", "--workers", "0", "--max-bad-fraction", "0.2", "--logs", str(tmp_path),
                 "--name", "light"])
    assert code == 0
    assert "bad samples skipped so far: 8 bad of 56 samples (14.3%)" in caplog.text
    assert "undecodable_image=8" in caplog.text


def test_too_much_bad_data_stops_a_small_run_with_exit_1(tmp_path, demo_data_dir, capsys):
    from cifd_clip.cli import main
    spec = _corrupt_copy(tmp_path / "data", demo_data_dir, bad_per_shard=5)  # 40 bad of 88: 45%, far below 1000
    code = main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--train-num-samples", "48",
                 "--batch-size", "8", "--workers", "0", "--logs", str(tmp_path), "--name", "heavy"])
    err = capsys.readouterr().err
    assert code == 1 and "too much bad data, more than the allowed 5% (--max-bad-fraction)" in err
    assert "Traceback" not in err
