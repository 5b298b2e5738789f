"""`cifd-clip train-rdm` end to end: a tiny embedding cache on disk, the CLI in a subprocess, no teacher."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cifd_clip.data import embedding_cache as cache_lib
from cifd_clip.data.augment import AugmentSettings
from cifd_clip.core.rdm import RDMFamily

D_IMG = D_TXT = 24  # CLIP towers share one embedding space
LATENT = 6
# The teacher named in cache.json does not exist anywhere: train-rdm must never try to load it.
MISSING_TEACHER = "tiny-vit-teacher@/nonexistent/teacher_weights.pt"


def write_cache(cache_dir, shard_sizes, *, seed=0, fingerprint="f00d"):
    """A cache whose image and text embeddings are two noisy views of the same low-dimensional latent
    in one shared space (so that cross-modal retrieval is meaningful)."""
    os.makedirs(cache_dir, exist_ok=True)
    settings = cache_lib.make_settings(
        teacher_spec=MISSING_TEACHER, teacher_pretrained=None, teacher_model_name="tiny-vit-teacher",
        teacher_fingerprint=fingerprint, teacher_image_size=64, image_dim=D_IMG, text_dim=D_TXT, dtype="float16",
        normalized=True, augmentation=AugmentSettings(views=1).to_dict())
    basis = np.random.default_rng(99)
    to_img = to_txt = basis.normal(size=(LATENT, D_IMG))
    rng = np.random.default_rng(seed)
    done, k = [], 0
    for s, n in enumerate(shard_sizes):
        writer = cache_lib.SiblingShardWriter(cache_dir, f"{s:05d}.tar", "float16")
        for _ in range(n):
            z = rng.normal(size=LATENT) * np.linspace(2.0, 0.5, LATENT)
            img, txt = z @ to_img + 0.03 * rng.normal(size=D_IMG), z @ to_txt + 0.03 * rng.normal(size=D_TXT)
            writer.write(f"{seed}{k:06d}", (img / np.linalg.norm(img))[None], txt / np.linalg.norm(txt))
            k += 1
        done.append(writer.commit({"source": f"/data/{s:05d}.tar", "skipped": 0, "settings": settings}))
    cache_lib.write_cache_meta(cache_dir, settings, done)
    return cache_dir


def cli(*args, launcher=(sys.executable, "-m", "cifd_clip"), timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([*launcher, "train-rdm", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


SMALL = ["--hidden-dim", 48, "--bottleneck-dim", 12, "--lr", 3e-3, "--batch-size", 32, "--rates", "3,30,300"]


@pytest.mark.slow
def test_train_rdm_runs_from_the_cache_alone_and_writes_checkpoint_table_plot(tmp_path):
    cache = write_cache(tmp_path / "cache", [400, 400])
    out = tmp_path / "run"
    result = cli("--cache", cache, "--out", out, "--epochs", 12, "--holdout-fraction", 0.1, *SMALL)
    assert result.returncode == 0, result.stderr
    for name in ("rdm.pt", "rdm_eval.md", "rdm_eval.json", "rdm_eval.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "rdm_eval.png").read_bytes()[:4] == b"\x89PNG"
    family = RDMFamily.load(out / "rdm.pt")
    assert family.rates("image") == family.rates("text") == [3.0, 30.0, 300.0]
    assert family.meta["teacher_fingerprint"] == "f00d"
    report = json.loads((out / "rdm_eval.json").read_text())
    assert [(r["modality"], r["rate_weight"]) for r in report["rdms"]] == \
        [(m, r) for m in ("image", "text") for r in (3.0, 30.0, 300.0)]
    assert 40 <= report["num_samples"] <= 120  # ~10% of 800, chosen by key
    assert report["train"]["samples"] == (800 - report["num_samples"]) * 12  # one pass per epoch
    assert report["warnings"] == [], report["warnings"]
    strongest = [r for r in report["rdms"] if r["rate_weight"] == 300.0]
    assert all(r["cosine"] > 0.9 for r in strongest)
    table = (out / "rdm_eval.md").read_text()
    assert "| image | 300 |" in table and "text_retrieval_recall@1" in table


@pytest.mark.slow
def test_a_small_cache_gets_the_epochs_that_min_steps_asks_for(tmp_path):
    """--epochs 1 on 800 samples at batch 32 is 25 steps; --min-steps 100 makes it 4 epochs per stage (two
    stages with --rate-continuation)."""
    cache = write_cache(tmp_path / "cache", [400, 400])
    result = cli("--cache", cache, "--out", tmp_path / "run", *SMALL, "--epochs", 1, "--min-steps", 100,
                 "--rate-continuation")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "rdm_eval.json").read_text())
    assert report["train"]["epochs"] == 4 and report["train"]["steps"] == 2 * 4 * 25
    assert RDMFamily.load(tmp_path / "run" / "rdm.pt").meta["epochs"] == 4


@pytest.mark.slow
def test_train_rdm_with_eval_cache_reports_retrieval_against_the_teacher(tmp_path):
    cache = write_cache(tmp_path / "cache", [300, 300])
    eval_cache = write_cache(tmp_path / "eval", [100], seed=1)
    ckpt = tmp_path / "models" / "rdms.pt"
    result = cli("--cache", cache, "--eval-cache", eval_cache, "--out", ckpt, "--epochs", 6, *SMALL)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "models" / "rdms_eval.json").read_text())
    assert report["num_samples"] == 100 and report["train"]["samples"] == 600 * 6
    assert report["teacher"]["text_retrieval_recall@5"] > 0.5  # the synthetic pairs are matchable
    for row in report["rdms"]:
        assert 0 <= row["image_retrieval_recall@1" if row["modality"] == "text" else "text_retrieval_recall@1"] <= 1
    assert (tmp_path / "models" / "rdms_config.yaml").is_file()


def test_train_rdm_refuses_bad_inputs_with_one_sentence(tmp_path, capsys):
    from cifd_clip.cli import main  # in-process: same entry point, no interpreter start-up per case

    assert main(["train-rdm", "--cache", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    cache = write_cache(tmp_path / "cache", [50])
    other = write_cache(tmp_path / "other", [20], fingerprint="beef")
    assert main(["train-rdm", "--cache", str(cache), "--eval-cache", str(other), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and "fingerprint" in err and len(err.strip().splitlines()) == 1
    assert main(["train-rdm", "--cache", str(cache), "--rates", "10,-1", "--out", str(tmp_path / "o")]) == 2
    assert "--rates" in capsys.readouterr().err
    assert main(["train-rdm", "--cache", str(cache), "--holdout-fraction", "0.001", "--out", str(tmp_path / "o")]) == 1
    assert "no held-out samples" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_rdm_under_torchrun_two_processes(tmp_path):
    cache = write_cache(tmp_path / "cache", [200, 200, 200, 200])
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                "-m", "cifd_clip"]
    result = cli("--cache", cache, "--out", out, "--epochs", 3, "--device", "cpu", "--log-every-rank", *SMALL,
                 launcher=torchrun)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "rdm_eval.json").read_text())
    assert report["train"]["world_size"] == 2
    # out.log is rank 0's, out-1.log rank 1's (asked for); every line, on stderr too, names host and rank
    for name, rank in (("out.log", 0), ("out-1.log", 1)):
        lines = (out / name).read_text().splitlines()
        assert lines and all(f" rank {rank}/2] " in line for line in lines if line[:4].isdigit()), name
    assert "rank 0/2] INFO training 6 RDMs" in result.stderr
    # every non-held-out sample was read once per epoch, split between the two ranks
    assert report["train"]["samples"] == (800 - report["num_samples"]) * 3
    family = RDMFamily.load(out / "rdm.pt")
    assert all(torch.isfinite(p).all() for p in family.parameters())


def test_train_rdm_reports_to_tensorboard_and_writes_out_log(tmp_path):
    """--report-to tensorboard: the loss terms as train/ scalars, the held-out evaluation as val/ ones (read back
    from the event file); the run's lines in out.log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifd_clip.cli import main

    cache = write_cache(tmp_path / "cache", [120])
    out = tmp_path / "run"
    assert main(["train-rdm", "--cache", str(cache), "--out", str(out), "--epochs", "2", "--log-every", "2",
                 "--report-to", "tensorboard", *map(str, SMALL)]) == 0
    acc = EventAccumulator(str(next((out / "tensorboard").glob("events.out.tfevents.*"))))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/image/R=3/rdm_rate", "train/text/R=300/rdm_distortion"} <= set(tags)
    # 2 epochs of 4 steps of 32 (120 samples, 6 held out), logged at step 1 and every --log-every 2
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 4, 6, 8]
    report = json.loads((out / "rdm_eval.json").read_text())
    row = next(r for r in report["rdms"] if r["modality"] == "image" and r["rate_weight"] == 30)
    assert [(e.step, e.value) for e in acc.Scalars("val/image/R=30/rate_bits")] == [(8, pytest.approx(row["rate_bits"]))]
    assert "val/teacher/text_retrieval_recall@1" in tags
    assert "training 6 RDMs" in (out / "out.log").read_text()
