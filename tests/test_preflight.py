"""The pre-flight check rejects unusable shards with one sentence before any model is built."""
from __future__ import annotations

import shutil

import pytest

from cifd_clip.data.preflight import preflight
from cifd_clip.errors import DataError


def test_good_demo_shards_pass_and_are_counted(demo_train_spec):
    report = preflight(demo_train_spec, workers=2, world_size=2)
    assert report.num_shards == 8 and report.num_samples == 48
    assert report.first_sample_members == ["jpg", "json", "txt"]


def test_missing_shards_are_rejected(demo_data_dir):
    spec = str(demo_data_dir / "train" / "{00000..00009}.tar")  # only 8 exist
    with pytest.raises(DataError, match=r"2 of 10 shards do not exist, e\.g\. .*00008\.tar"):
        preflight(spec, workers=1, world_size=1)


def test_a_file_that_is_not_a_tar_is_rejected(tmp_path, demo_data_dir):
    shutil.copy(demo_data_dir / "train" / "00000.tar", tmp_path / "0.tar")
    (tmp_path / "1.tar").write_text("this is not a tar file, it is a note someone saved with the wrong name\n" * 10)
    with pytest.raises(DataError, match=r"1\.tar is not a readable tar file"):
        preflight(str(tmp_path / "{0..1}.tar"), workers=1, world_size=1)


def test_too_few_shards_for_workers_times_ranks_unless_resampled(demo_train_spec):
    with pytest.raises(DataError, match=r"has 8 shard\(s\) but 2 rank\(s\) × 5 worker\(s\) need at least 10"):
        preflight(demo_train_spec, workers=5, world_size=2)
    assert preflight(demo_train_spec, workers=5, world_size=2, resampled=True).num_shards == 8


def test_first_sample_without_the_needed_keys_is_rejected(demo_train_spec):
    with pytest.raises(DataError, match="needs 'png;webp'"):
        preflight(demo_train_spec, workers=1, world_size=1, image_key="png;webp")
    with pytest.raises(DataError, match="needs 'caption'"):
        preflight(demo_train_spec, workers=1, world_size=1, text_key="caption")
    with pytest.raises(DataError, match="needs 't_img.npy'"):
        preflight(demo_train_spec, workers=1, world_size=1, needed_keys=["t_img.npy"])
    with pytest.raises(DataError, match="no string field 'alt'"):
        preflight(demo_train_spec, workers=1, world_size=1, caption_json_field="alt")
    assert preflight(demo_train_spec, workers=1, world_size=1, caption_json_field="caption").num_shards == 8


def test_an_empty_spec_is_rejected():
    with pytest.raises(DataError, match="empty"):
        preflight("  ", workers=1, world_size=1)
