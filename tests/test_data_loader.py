"""The training stream: counts, rank/worker splitting, determinism, resume and collation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cifd_clip.data.loader import make_train_loader
from cifd_clip.data.shards import count_samples, expand_urls, iter_samples
from cifd_clip.errors import DataError


def _loader(spec, transforms, **kw):
    preprocess, tokenizer = transforms
    args = dict(batch_size=3, workers=2, seed=7)
    args.update(kw)
    return make_train_loader(spec, preprocess=preprocess, tokenizer=tokenizer, **args)


def _keys(info, epoch=0, skip=0):
    return [k for batch in info.iterate(epoch, skip_batches=skip) for k in batch["key"]]


def test_spec_expansion_joins_sources_and_counts_from_sizes_json(demo_data_dir, demo_train_spec):
    spec = demo_train_spec + "::" + str(demo_data_dir / "val" / "{00000..00003}.tar")
    urls = expand_urls(spec)
    assert len(urls) == 12 and urls[0].endswith("train/00000.tar") and urls[-1].endswith("val/00003.tar")
    assert count_samples(urls) == 48 + 12
    assert count_samples(["pipe:cat " + urls[0]]) is None


def test_iter_samples_reads_shards_in_order_and_pipe_urls(demo_data_dir):
    shard = str(demo_data_dir / "train" / "00001.tar")
    samples = list(iter_samples([shard]))
    assert [s["key"] for s in samples] == [f"{i:09d}" for i in range(6, 12)]
    assert samples[0]["image"].mode == "RGB" and samples[0]["text"].endswith(".")
    assert [s["key"] for s in iter_samples([f"pipe:cat {shard}"])] == [s["key"] for s in samples]


def test_two_ranks_two_workers_see_every_sample_exactly_once(demo_train_spec, student_transforms):
    seen = []
    for rank in range(2):
        info = _loader(demo_train_spec, student_transforms, rank=rank, world_size=2)
        batches = list(info.iterate(0))
        assert len(batches) == info.num_batches == 8
        assert all(b["image"].shape == (3, 3, 48, 48) and b["text"].dtype == torch.long for b in batches)
        assert all(b["text"].shape == (3, 24) for b in batches)
        seen += [k for b in batches for k in b["key"]]
    assert sorted(seen) == [f"{i:09d}" for i in range(48)]


def test_shuffling_is_deterministic_per_epoch_and_changes_between_epochs(demo_train_spec, student_transforms):
    first = _keys(_loader(demo_train_spec, student_transforms), epoch=0)
    again = _keys(_loader(demo_train_spec, student_transforms), epoch=0)
    other_epoch = _keys(_loader(demo_train_spec, student_transforms), epoch=1)
    other_seed = _keys(_loader(demo_train_spec, student_transforms, seed=8), epoch=0)
    assert first == again
    assert first != other_epoch and sorted(first) == sorted(other_epoch)
    assert first != other_seed


def test_skip_batches_resumes_at_the_exact_batch(demo_train_spec, student_transforms):
    info = _loader(demo_train_spec, student_transforms, workers=2)
    full = [b["key"] for b in info.iterate(3)]
    for skip in (1, 3, 16):
        assert [b["key"] for b in info.iterate(3, skip_batches=skip)] == full[skip:]


def test_every_rank_yields_the_same_number_of_batches_when_shards_are_uneven(demo_data_dir, student_transforms):
    # 8 train shards of 6 + 4 val shards of 3 = 60 samples over 2 ranks x 2 workers: readers hold 15..18.
    spec = str(demo_data_dir / "train" / "{00000..00007}.tar") + "::" + str(demo_data_dir / "val" / "{00000..00003}.tar")
    counts = [len(list(_loader(spec, student_transforms, rank=r, world_size=2, batch_size=4).iterate(0)))
              for r in range(2)]
    assert counts == [60 // 8, 60 // 8]


def test_resampled_mode_yields_the_requested_epoch_length(demo_train_spec, student_transforms):
    info = _loader(demo_train_spec, student_transforms, resampled=True, num_samples=30, workers=1)
    assert info.num_batches == 10 and len(list(info.iterate(0))) == 10


def test_resampled_mode_accepts_fewer_shards_than_readers(demo_data_dir, student_transforms):
    one_shard = str(demo_data_dir / "train" / "00000.tar")
    with pytest.raises(DataError, match="at least 2"):
        _loader(one_shard, student_transforms, workers=2)
    info = _loader(one_shard, student_transforms, workers=2, resampled=True, num_samples=12)
    assert len(list(info.iterate(0))) == 4


def test_sample_stages_add_fields_that_are_batched_as_float_tensors(demo_train_spec, student_transforms):
    def add_embeddings(sample):  # stands in for the embedding cache's stage
        sample["t_image_emb"] = np.full(5, int(sample["key"]), dtype=np.float16)
        sample["t_text_emb"] = torch.ones(4, dtype=torch.float64)
        return sample

    preprocess, tokenizer = student_transforms
    info = _loader(demo_train_spec, student_transforms, workers=1, sample_stages=[add_embeddings],
                   teacher_preprocess=preprocess, teacher_tokenizer=tokenizer)
    batch = next(iter(info.iterate(0)))
    assert batch["t_image_emb"].dtype == torch.float32 and batch["t_image_emb"].shape == (3, 5)
    assert batch["t_image_emb"][:, 0].tolist() == [float(int(k)) for k in batch["key"]]
    assert batch["t_text_emb"].dtype == torch.float32 and batch["t_text_emb"].shape == (3, 4)
    assert batch["teacher_image"].shape == batch["image"].shape
    assert torch.equal(batch["teacher_text"], batch["text"])
    assert "__stats__" not in batch


def test_uncountable_shards_need_an_explicit_sample_count(demo_data_dir, student_transforms):
    spec = "pipe:cat " + str(demo_data_dir / "train" / "{00000..00003}.tar")
    with pytest.raises(DataError, match="--train-num-samples"):
        _loader(spec, student_transforms, workers=0)
    info = _loader(spec, student_transforms, workers=0, num_samples=24)
    assert len(_keys(info)) == 24


def test_random_augmentations_repeat_exactly_across_runs_and_resume(demo_train_spec):
    import open_clip

    from cifd_clip.clip_models import register_model_configs

    register_model_configs()
    augment = open_clip.image_transform(48, is_train=True)  # RandomResizedCrop
    tokenizer = open_clip.get_tokenizer("tiny-vit-student")
    images = lambda skip: [b["image"] for b in _loader(demo_train_spec, (augment, tokenizer)).iterate(0, skip_batches=skip)]
    torch.manual_seed(1)
    first = images(0)
    torch.manual_seed(2)
    again = images(0)
    resumed = images(5)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(again) == 16
    assert all(torch.equal(a, b) for a, b in zip(first[5:], resumed)) and len(resumed) == 11
    assert not torch.equal(first[0][0], first[0][1])


def _with_worker_pid(sample):
    import os

    sample["pid"] = os.getpid()  # batched as a float tensor: which process made the batch
    return sample


def test_a_persistent_worker_follows_the_epoch_and_a_resume_exactly(demo_train_spec, student_transforms):
    """A persistent worker keeps the copy of the stream it was started with; the epoch and the batches a resume
    skips reach it through shared memory, so it yields what workers started afresh for each epoch yield."""
    def fresh(epoch, skip=0):
        return _keys(_loader(demo_train_spec, student_transforms, workers=1, persistent_workers=False), epoch, skip)

    info = _loader(demo_train_spec, student_transforms, workers=1, sample_stages=[_with_worker_pid])
    assert info.dataloader.persistent_workers
    epochs, pids = [], set()
    for epoch, skip in ((0, 0), (1, 0), (1, 5), (2, 0)):
        batches = list(info.iterate(epoch, skip_batches=skip))
        epochs.append([k for b in batches for k in b["key"]])
        pids |= {int(p) for b in batches for p in b["pid"]}
    assert len(pids) == 1  # one worker process served every epoch
    first, second, resumed, third = epochs
    assert second != first and sorted(second) == sorted(first)
    assert first == fresh(0) and second == fresh(1) and third == fresh(2)
    assert resumed == second[5 * 3:] == fresh(1, skip=5)


class _EpochStamp:
    """A sample stage that knows the epoch (as the embedding cache's join does, to draw a cached view per epoch)."""

    def __init__(self):
        self.epoch = -1

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __call__(self, sample):
        sample["stamp"] = self.epoch
        return sample


@pytest.mark.parametrize("workers", [0, 1])
def test_sample_stages_get_each_epoch_in_the_process_that_runs_them(demo_train_spec, student_transforms, workers):
    info = _loader(demo_train_spec, student_transforms, workers=workers, sample_stages=[_EpochStamp()])
    for epoch in (0, 1, 2):
        assert {int(s) for b in info.iterate(epoch, skip_batches=epoch) for s in b["stamp"]} == {epoch}
