"""`cifd-clip embed` with a real tiny open_clip teacher over real webdataset shards."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifd_clip import cli
from cifd_clip.data import embedding_cache as cache_lib
from cifd_clip.data.augment import apply_params
from cifd_clip.data.shards import iter_samples, write_shard
from cifd_clip.errors import DataError, UserError
from cifd_clip.clip_models import load_teacher

REPO = Path(__file__).resolve().parents[1]
N_SHARDS, PER_SHARD = 3, 5


def _png(seed, width, height):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_shards(folder, keys_fn=lambda k: f"{k:06d}"):
    k = 0
    for s in range(N_SHARDS):
        samples = []
        for i in range(PER_SHARD):
            samples.append({"__key__": keys_fn(k), "png": _png(k, 60 + 7 * i, 48 + 5 * i), "txt": f"photo number {k}"})
            k += 1
        if s == 1:  # one broken image: skipped and counted, never fatal
            samples.append({"__key__": "broken", "png": b"not an image", "txt": "broken"})
        write_shard(Path(folder) / f"{s:05d}.tar", samples)
    return f"{folder}/{{00000..{N_SHARDS - 1:05d}}}.tar"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("embed")
    spec = make_shards(root / "src")
    teacher = load_teacher("tiny-vit-teacher")
    weights = root / "teacher.pt"
    torch.save(teacher.model.state_dict(), weights)
    other = root / "other_teacher.pt"
    torch.manual_seed(123)
    torch.save(load_teacher("tiny-vit-teacher").model.state_dict(), other)
    return {"root": root, "spec": spec, "weights": str(weights), "other": str(other)}


def embed(data, out, *extra):
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--teacher-pretrained", data["weights"], "--train-data", data["spec"],
            "--out", str(out), "--batch-size", "4", "--workers", "0", "--threads", "1", *extra]
    return cli.main(argv)


def cache_files(folder):
    """Bytes of every file that makes up a cache (not the run's config)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
            if p.name.endswith(".tar") or p.name == "cache.json"}


def assert_same_cache(a, b):
    """Same shards, keys, views and metadata; embeddings equal up to float16 rounding (another process may
    use other kernels or thread counts, which can flip the last bit of a float16)."""
    meta_a, meta_b = cache_lib.read_cache_meta(a), cache_lib.read_cache_meta(b)
    for m in (meta_a, meta_b):
        m.pop("cache_dir"), m.pop("bytes")
        for s in m["shards"]:
            s.pop("bytes")
    assert meta_a == meta_b
    for s in meta_a["shards"]:
        x, y = cache_lib.read_cached_shard(a, s["name"]), cache_lib.read_cached_shard(b, s["name"])
        assert x.keys == y.keys
        np.testing.assert_array_equal(x.paug, y.paug)
        np.testing.assert_allclose(x.image_emb.astype(np.float32), y.image_emb.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(x.text_emb.astype(np.float32), y.text_emb.astype(np.float32), atol=2e-3)


@pytest.fixture(scope="module")
def reference(data):
    out = data["root"] / "reference"
    assert embed(data, out, "--augmentations", "3") == 0
    return out


def test_cached_embeddings_equal_direct_teacher_forward(data, reference):
    meta = cache_lib.read_cache_meta(reference)
    assert meta["num_samples"] == N_SHARDS * PER_SHARD and meta["num_skipped"] == 1
    assert meta["image_dim"] == meta["text_dim"] == 128 and meta["dtype"] == "float16" and meta["normalized"]
    teacher = load_teacher("tiny-vit-teacher", data["weights"])
    for shard_idx, url in enumerate(sorted(Path(data["root"] / "src").glob("*.tar"))):
        samples = list(iter_samples([str(url)]))
        cached = cache_lib.read_cached_shard(reference, url.name, views=3)
        assert list(cached.keys) == [s["key"] for s in samples]  # the cache shard lines up with its source
        images = torch.stack([teacher.preprocess(apply_params(s["image"], cached.paug[i, v]))
                              for i, s in enumerate(samples) for v in range(3)])
        want_img = teacher.encode_image(images).view(len(samples), 3, -1).numpy()
        want_txt = teacher.encode_text(teacher.tokenizer([s["text"] for s in samples])).numpy()
        np.testing.assert_allclose(cached.image_emb.astype(np.float32), want_img, atol=2e-3, rtol=0)
        np.testing.assert_allclose(cached.text_emb.astype(np.float32), want_txt, atol=2e-3, rtol=0)
        # view 0 is the plain eval view, the others differ (they are real augmentations)
        plain = teacher.encode_image(torch.stack([teacher.preprocess(s["image"]) for s in samples])).numpy()
        np.testing.assert_allclose(cached.image_emb[:, 0].astype(np.float32), plain, atol=2e-3, rtol=0)
        assert np.abs(cached.image_emb[:, 1:].astype(np.float32) - plain[:, None]).max() > 1e-2


def test_restart_after_a_crash_gives_the_same_cache(data, reference):
    out = data["root"] / "restarted"
    assert embed(data, out, "--augmentations", "3") == 0
    # what a killed run leaves: a shard never committed, a stale temp file, a truncated shard, no cache.json
    (out / "00001.tar").unlink()
    (out / "00001.tar.json").unlink()
    (out / "00001.tar.tmp-99999").write_bytes(b"half a shard")
    (out / "00002.tar").write_bytes((out / "00002.tar").read_bytes()[:2048])
    (out / "cache.json").unlink()
    with pytest.raises(UserError, match="not a finished embedding cache"):
        cache_lib.read_cache_meta(out)
    before = (out / "00000.tar").stat().st_mtime_ns
    assert embed(data, out, "--augmentations", "3") == 0
    assert (out / "00000.tar").stat().st_mtime_ns == before  # complete shards are not redone
    assert not list(out.glob("*.tmp-*"))
    assert cache_files(out) == cache_files(reference)


@pytest.mark.slow
def test_killed_subprocess_then_restart_gives_the_same_cache(data, reference):
    out = data["root"] / "killed"
    cmd = [sys.executable, "-m", "cifd_clip", "embed", "--teacher", "tiny-vit-teacher", "--teacher-pretrained",
           data["weights"], "--train-data", data["spec"], "--out", str(out), "--batch-size", "4", "--workers", "0",
           "--threads", "1", "--augmentations", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # kill as soon as the first shard is complete, i.e. in the middle of the run
        import time
        deadline = time.time() + 120
        while not (out / "00000.tar.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.wait()
    assert not (out / "cache.json").exists()
    assert embed(data, out, "--augmentations", "3") == 0
    assert_same_cache(out, reference)


def test_other_teacher_or_settings_into_the_same_folder_is_refused(data, reference, capsys):
    out = data["root"] / "refuse"
    assert embed(data, out) == 0
    capsys.readouterr()
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--teacher-pretrained", data["other"], "--train-data", data["spec"],
            "--out", str(out), "--workers", "0", "--threads", "1"]
    assert cli.main(argv) == 1
    assert "teacher weights fingerprint" in capsys.readouterr().err
    assert embed(data, out, "--dtype", "float32") == 1
    assert "dtype is 'float16' in the cache but 'float32' here" in capsys.readouterr().err
    # also while the cache is unfinished: the per-shard markers carry the settings
    (out / "cache.json").unlink()
    assert embed(data, out, "--augmentations", "2") == 1
    assert "augmentation" in capsys.readouterr().err
    # readers refuse a cache made by another teacher, naming the difference
    meta = cache_lib.read_cache_meta(reference)
    other = load_teacher("tiny-vit-teacher", data["other"])
    from cifd_clip.clip_models import weights_fingerprint
    with pytest.raises(UserError, match="teacher weights fingerprint"):
        cache_lib.check_cache_compatible(meta, teacher_fingerprint=weights_fingerprint(other.model))


def test_cache_join_refuses_source_shards_whose_keys_do_not_line_up(data, reference, tmp_path):
    join = cache_lib.CacheJoin(reference)
    sample = next(iter_samples([str(data["root"] / "src" / "00000.tar")]))
    assert join(sample)["t_image_emb"].shape == (128,)
    changed = make_shards(tmp_path / "src", keys_fn=lambda k: f"x{k:05d}")
    sample = next(iter_samples(changed))
    with pytest.raises(DataError, match=r"00000.tar has no sample x00000"):
        join(sample)


def test_clashing_shard_names_and_empty_data_are_refused(data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    make_shards(a), make_shards(b)
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--train-data", f"{a}/00000.tar::{b}/00000.tar",
            "--out", str(tmp_path / "c"), "--workers", "0"]
    assert cli.main(argv) == 1
    assert "both named 00000.tar" in capsys.readouterr().err
    write_shard(tmp_path / "bad" / "00000.tar", [{"__key__": "a", "png": b"nope", "txt": "x"}])
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--train-data", f"{tmp_path}/bad/00000.tar",
            "--out", str(tmp_path / "d"), "--workers", "0"]
    assert cli.main(argv) == 1
    assert "no usable sample" in capsys.readouterr().err


@pytest.mark.slow
def test_two_torchrun_ranks_killed_midway_then_resumed_give_the_same_cache_as_one_process(data, reference):
    """A pre-empted multi-GPU embed: every process of the job is killed once a shard is complete; the same
    command resumes (finished shards kept) and the cache equals one uninterrupted process's."""
    import signal
    import time
    out = data["root"] / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "--", "cifd_clip", "embed", "--teacher", "tiny-vit-teacher", "--teacher-pretrained", data["weights"],
           "--train-data", data["spec"], "--out", str(out), "--batch-size", "4", "--workers", "1",
           "--threads", "1", "--augmentations", "3", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    import shutil
    for _attempt in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            deadline = time.time() + 120
            while not list(out.glob("*.tar.json")) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # what a scheduler's pre-emption does: the launcher and its ranks
            proc.wait()
        if not (out / "cache.json").exists():
            break
        # on a loaded machine the job can finish its last shard before this process wakes up to kill it: that
        # run never was pre-empted, so it says nothing about resuming; start again
        shutil.rmtree(out)
    assert not (out / "cache.json").exists()
    finished = {p.name for p in out.glob("*.tar.json")}
    assert 0 < len(finished) < N_SHARDS
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1: embedded" in result.stdout
    assert_same_cache(out, reference)


def test_training_loader_joins_cached_embeddings_by_key(demo_train_spec, student_transforms, tmp_path):
    from cifd_clip.data.loader import make_train_loader

    out = tmp_path / "cache"
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--train-data", demo_train_spec, "--out", str(out),
            "--batch-size", "16", "--workers", "0", "--threads", "1", "--augmentations", "2"]
    assert cli.main(argv) == 0
    stored = {}
    for s in cache_lib.read_cache_meta(out)["shards"]:
        shard = cache_lib.read_cached_shard(out, s["name"])
        stored.update({k: (shard.image_emb[i], shard.text_emb[i]) for i, k in enumerate(shard.keys)})
    preprocess, tokenizer = student_transforms
    info = make_train_loader(demo_train_spec, preprocess=preprocess, tokenizer=tokenizer, batch_size=4, workers=2,
                             seed=0, sample_stages=[cache_lib.CacheJoin(out, view="random", seed=1)])
    views = set()
    for batch in info:
        assert batch["t_image_emb"].shape == (4, 128) and batch["t_text_emb"].dtype == torch.float32
        assert batch["paug"].shape == (4, 5) and batch["image"].shape == (4, 3, 48, 48)
        for j, key in enumerate(batch["key"]):
            img, txt = stored[key]
            v = next(v for v in range(2) if np.allclose(img[v], batch["t_image_emb"][j].numpy()))
            views.add(v)
            np.testing.assert_array_equal(txt.astype(np.float32), batch["t_text_emb"][j].numpy())
    assert views == {0, 1}


def test_student_input_is_the_teachers_view_resized(demo_train_spec, tmp_path):
    """Distillation replays the cached crop and then only resizes and normalises: the student's pixels are the
    teacher's (up to resampling), for plain and cropped views alike."""
    from cifd_clip.commands.distill import Config
    from cifd_clip.config import parse
    from cifd_clip.distill.inputs import build_distill_loader
    from cifd_clip.engine.distributed import init_distributed
    from cifd_clip.clip_models import load_model

    out = tmp_path / "cache"
    argv = ["embed", "--teacher", "tiny-vit-teacher", "--train-data", demo_train_spec, "--out", str(out),
            "--batch-size", "16", "--workers", "0", "--threads", "1", "--augmentations", "3"]
    assert cli.main(argv) == 0
    teacher, student = load_teacher("tiny-vit-teacher"), load_model("tiny-vit-student")
    cfg = parse(Config, ["--train-data", demo_train_spec, "--model", "tiny-vit-student", "--cache", str(out),
                         "--batch-size", "8", "--workers", "0"])
    info = build_distill_loader(cfg, student, init_distributed("cpu"))  # what `cifd-clip distill` trains on
    # the teacher's input for the same replayed view, beside the student's
    info.dataset.teacher_preprocess = teacher.preprocess
    mean = torch.tensor(student.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(student.preprocess_cfg["std"]).view(1, 3, 1, 1)
    cropped = 0
    for batch in info:
        seen_by_student = batch["image"] * std + mean  # 48 px
        seen_by_teacher = batch["teacher_image"] * std + mean  # 64 px (same normalisation constants)
        resized = torch.nn.functional.interpolate(seen_by_teacher, size=48, mode="bilinear", antialias=True)
        per_sample = (resized - seen_by_student).abs().mean(dim=(1, 2, 3))
        assert per_sample.max() < 0.05, per_sample
        # the comparison can tell images apart: against another sample's view every difference is larger
        other = (resized - seen_by_student.roll(1, 0)).abs().mean(dim=(1, 2, 3))
        assert (per_sample < other).all() and 3 * per_sample.mean() < other.mean()
        cropped += int((batch["paug"][:, 2] < 1).sum())
    assert cropped > 0  # cached crops were replayed, not only plain images
