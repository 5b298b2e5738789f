"""Cache format: writer/reader round trip, compatibility checks, key join, batches for RDM training.

These tests write caches with synthetic embeddings; tests/test_embed.py makes them with a real teacher.
"""
import json
import os

import numpy as np
import pytest
import torch

from cifd_clip.data import embedding_cache as cache_lib
from cifd_clip.data.augment import AugmentSettings, IDENTITY, sample_views
from cifd_clip.errors import DataError, UserError

D_IMG, D_TXT = 8, 6


def _settings(views=1, fingerprint="abc123", dtype="float16"):
    return cache_lib.make_settings(
        teacher_spec="tiny-vit-teacher", teacher_pretrained=None, teacher_model_name="tiny-vit-teacher",
        teacher_fingerprint=fingerprint, teacher_image_size=64, image_dim=D_IMG, text_dim=D_TXT, dtype=dtype,
        normalized=True, augmentation=AugmentSettings(views=views).to_dict())


def write_synthetic_cache(cache_dir, shard_sizes, views=1, dtype="float16"):
    """A cache of len(shard_sizes) shards; sample k's embeddings are filled with k (so batches are traceable)."""
    os.makedirs(cache_dir, exist_ok=True)
    settings = _settings(views, dtype=dtype)
    done, k = [], 0
    for s, n in enumerate(shard_sizes):
        w = cache_lib.SiblingShardWriter(cache_dir, f"{s:05d}.tar", dtype)
        for _ in range(n):
            key = f"{k:06d}"
            img = np.full((views, D_IMG), k, np.float32) + np.arange(views)[:, None] * 0.5
            paug = sample_views(AugmentSettings(views=views), key, 100, 80)
            w.write(key, img, np.full(D_TXT, -k, np.float32), paug)
            k += 1
        done.append(w.commit({"source": f"/data/{s:05d}.tar", "skipped": 0, "settings": settings}))
    return cache_lib.write_cache_meta(cache_dir, settings, done)


def test_round_trip_keeps_keys_order_dtype_and_views(tmp_path):
    write_synthetic_cache(tmp_path, [5, 3], views=3)
    meta = cache_lib.read_cache_meta(tmp_path)
    assert meta["num_samples"] == 8 and [s["count"] for s in meta["shards"]] == [5, 3]
    shard = cache_lib.read_cached_shard(tmp_path, "00001.tar", expected_count=3, views=3)
    assert shard.keys == ["000005", "000006", "000007"]
    assert shard.image_emb.dtype == np.float16 and shard.image_emb.shape == (3, 3, D_IMG)
    assert shard.image_emb[1, 2, 0] == 6 + 1.0 and shard.text_emb[2, 0] == -7
    assert shard.paug.shape == (3, 3, 5) and tuple(shard.paug[0, 0]) == IDENTITY
    assert not list(tmp_path.glob("*.tmp-*"))


def test_float32_cache_is_stored_as_float32(tmp_path):
    write_synthetic_cache(tmp_path, [2], dtype="float32")
    shard = cache_lib.read_cached_shard(tmp_path, "00000.tar")
    assert shard.image_emb.dtype == np.float32 and shard.paug is None


def test_unfinished_cache_and_wrong_format_are_refused(tmp_path):
    write_synthetic_cache(tmp_path, [2])
    (tmp_path / "cache.json").unlink()
    with pytest.raises(UserError, match="not a finished embedding cache"):
        cache_lib.read_cache_meta(tmp_path)
    (tmp_path / "cache.json").write_text(json.dumps({"format": cache_lib.FORMAT, "format_version": 99}))
    with pytest.raises(UserError, match="format version 99"):
        cache_lib.read_cache_meta(tmp_path)


def test_cache_from_other_teacher_or_settings_is_refused(tmp_path):
    write_synthetic_cache(tmp_path, [2], views=2)
    meta = cache_lib.read_cache_meta(tmp_path)
    cache_lib.check_cache_compatible(meta, teacher_fingerprint="abc123", image_dim=D_IMG, text_dim=D_TXT,
                                     normalized=True, dtype="float16", views=2)
    with pytest.raises(UserError, match="teacher weights fingerprint is 'abc123' in the cache but 'fff' here"):
        cache_lib.check_cache_compatible(meta, teacher_fingerprint="fff")
    with pytest.raises(UserError, match=r"image dim is 8 in the cache but 16 here; normalized is True"):
        cache_lib.check_cache_compatible(meta, image_dim=16, normalized=False)
    with pytest.raises(UserError, match="views per sample are 2 in the cache but 1 here"):
        cache_lib.check_cache_compatible(meta, views=1)


def test_half_written_shard_is_not_complete(tmp_path):
    write_synthetic_cache(tmp_path, [3, 3])
    assert cache_lib.read_done_marker(tmp_path, "00000.tar")["count"] == 3
    # truncated shard (e.g. copied partially) no longer matches its marker
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[:1024])
    assert cache_lib.read_done_marker(tmp_path, "00000.tar") is None
    # an aborted writer leaves nothing behind that looks like a shard
    w = cache_lib.SiblingShardWriter(tmp_path, "00002.tar", "float16")
    w.write("x", np.zeros((1, D_IMG)), np.zeros(D_TXT))
    assert cache_lib.read_done_marker(tmp_path, "00002.tar") is None and not (tmp_path / "00002.tar").exists()
    w.abort()
    assert not list(tmp_path.glob("00002*"))


def test_cache_join_adds_embeddings_by_key_and_refuses_unknown_keys(tmp_path):
    write_synthetic_cache(tmp_path, [4, 4], views=3)
    join = cache_lib.CacheJoin(tmp_path, view="first")
    out = join({"key": "000005", "url": "/elsewhere/00001.tar", "image": None, "text": "t"})
    assert out["t_image_emb"].dtype == np.float32 and out["t_image_emb"].shape == (D_IMG,)
    assert out["t_image_emb"][0] == 5 and out["t_text_emb"][0] == -5 and tuple(out["paug"]) == IDENTITY
    with pytest.raises(DataError, match="00001.tar has no sample 000002 of source shard /elsewhere/00001.tar"):
        join({"key": "000002", "url": "/elsewhere/00001.tar", "image": None, "text": "t"})
    with pytest.raises(DataError, match="source shard /x/00009.tar has no cache shard"):
        join({"key": "000002", "url": "/x/00009.tar", "image": None, "text": "t"})


def test_cache_join_random_view_is_seeded_and_replays_crop(tmp_path):
    from PIL import Image
    write_synthetic_cache(tmp_path, [6], views=4)
    join = cache_lib.CacheJoin(tmp_path, view="random", seed=3)
    picked = []
    for k in range(6):
        img = Image.new("RGB", (100, 80))
        out = join({"key": f"{k:06d}", "url": "00000.tar", "image": img, "text": ""})
        view = int(round((out["t_image_emb"][0] - k) / 0.5))
        picked.append(view)
        expected = sample_views(AugmentSettings(views=4), f"{k:06d}", 100, 80)[view]
        np.testing.assert_allclose(out["paug"], expected, atol=1e-6)
        if view > 0:  # the image was replaced by the cropped view
            assert out["image"].size == (round(expected[2] * 100), round(expected[3] * 80))
    assert len(set(picked)) > 1
    again = cache_lib.CacheJoin(tmp_path, view="random", seed=3)
    import pickle
    again = pickle.loads(pickle.dumps(again))
    assert [int(round((again({"key": f"{k:06d}", "url": "00000.tar", "image": None, "text": ""})["t_image_emb"][0] - k) / 0.5))
            for k in range(6)] == picked


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_cached_batches_cover_each_sample_once_across_ranks(tmp_path, world_size):
    sizes = [7, 5, 9, 4]
    write_synthetic_cache(tmp_path, sizes)
    total = sum(sizes)
    seen, n_batches = [], set()
    for rank in range(world_size):
        batches = list(cache_lib.iter_cached_embeddings(tmp_path, batch_size=4, rank=rank, world_size=world_size,
                                                        seed=1, epoch=2, shuffle_buffer=6))
        n_batches.add(len(batches))
        for b in batches:
            assert b["t_image_emb"].dtype == torch.float32 and b["t_image_emb"].shape[1] == D_IMG
            ids = [int(k) for k in b["key"]]
            assert b["t_image_emb"][:, 0].tolist() == ids and b["t_text_emb"][:, 0].tolist() == [-i for i in ids]
            seen.extend(ids)
    assert len(n_batches) == 1  # DDP ranks step in lockstep
    assert len(seen) == len(set(seen)) == total // world_size * world_size
    meta = cache_lib.read_cache_meta(tmp_path)
    assert n_batches.pop() == cache_lib.num_cached_batches(meta, batch_size=4, world_size=world_size)


def test_cached_batches_shuffle_per_epoch_and_are_reproducible(tmp_path):
    write_synthetic_cache(tmp_path, [10, 10, 10])

    def keys(**kw):
        return [k for b in cache_lib.iter_cached_embeddings(tmp_path, batch_size=8, **kw) for k in b["key"]]
    assert keys(shuffle=False) == [f"{k:06d}" for k in range(30)]
    assert keys(seed=0, epoch=0) == keys(seed=0, epoch=0)
    assert keys(seed=0, epoch=0) != keys(seed=0, epoch=1)
    assert sorted(keys(seed=0, epoch=1)) == keys(shuffle=False)
    assert len(keys(drop_last=True)) == 24


def test_cache_join_keeps_shards_within_its_memory_budget(tmp_path):
    write_synthetic_cache(tmp_path, [4, 4, 4])
    one_shard = cache_lib.read_cached_shard(tmp_path, "00000.tar").nbytes
    join = cache_lib.CacheJoin(tmp_path, max_bytes_in_memory=2 * one_shard)
    for k in (0, 4, 8, 1):
        join({"key": f"{k:06d}", "url": f"{k // 4:05d}.tar", "image": None, "text": ""})
    assert list(join._loaded) == ["00002.tar", "00000.tar"]


def test_cache_view_auto_draws_among_several_views_and_random_on_one_view_is_refused(tmp_path):
    write_synthetic_cache(tmp_path / "three", [6], views=3)
    auto = cache_lib.CacheJoin(tmp_path / "three")
    picked = {int(round((auto({"key": f"{k:06d}", "url": "00000.tar", "image": None, "text": ""})["t_image_emb"][0]
                         - k) / 0.5)) for k in range(6)}
    assert len(picked) > 1  # several views are used by default
    write_synthetic_cache(tmp_path / "one", [4], views=1)
    assert cache_lib.CacheJoin(tmp_path / "one").view == "first"
    with pytest.raises(UserError, match="--cache-view random needs a cache with several views"):
        cache_lib.CacheJoin(tmp_path / "one", view="random")


def test_rdm_training_batches_carry_every_cached_view(tmp_path):
    from cifd_clip.rdm.training import family_loss
    from cifd_clip.core.rdm import RDMFamily

    write_synthetic_cache(tmp_path, [4, 4], views=3)
    batches = list(cache_lib.iter_cached_embeddings(tmp_path, batch_size=4, shuffle=False, all_views=True))
    assert [b["t_image_emb"].shape for b in batches] == [(4, 3, D_IMG)] * 2
    assert batches[0]["t_image_emb"][1, 2, 0] == 1 + 1.0  # sample 1, view 2
    family = RDMFamily.build({"image": D_IMG, "text": D_TXT}, [10.0], hidden_dim=8, bottleneck_dim=2)
    loss, terms = family_loss(family, batches[0])  # all 12 image views and 4 captions go through the RDMs
    assert torch.isfinite(loss)
