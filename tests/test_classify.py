"""The classification path: readers, the model zoo, the baseline losses, and the stages end to end at tiny size
(through the same loop, cache, RDM and IBM code as the CLIP path)."""
from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

from cifd_clip.cli import main
from cifd_clip.errors import DataError, UserError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 36-class shapes set in CIFAR-100's pickle layout, and a briefly trained cnn4 teacher."""
    from cifd_clip.classify.shapes import write_shapes_cifar

    root = tmp_path_factory.mktemp("cls")
    write_shapes_cifar(root / "data", train_samples=96, test_samples=48)
    data = f"cifar100:{root / 'data'}"
    assert main(["cls-train", "--train-data", data, "--model", "cnn4", "--epochs", "1", "--batch-size", "16",
                 "--workers", "0", "--logs", str(root / "runs"), "--name", "teacher"]) == 0
    return {"root": root, "data": data, "teacher": root / "runs" / "teacher" / "checkpoints" / "epoch_1.pt"}


def distill(shapes, name, *extra):
    return main(["cls-distill", "--train-data", shapes["data"], "--model", "cnn2", "--epochs", "1", "--batch-size",
                 "16", "--workers", "0", "--logs", str(shapes["root"] / "runs"), "--name", name,
                 *[str(e) for e in extra]])


def last_terms(shapes, name) -> dict:
    lines = (shapes["root"] / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return next(json.loads(line) for line in reversed(lines) if "loss" in json.loads(line))


# ---------------------------------------------------------------- readers


def test_cifar_pickles_are_read_safely(shapes, tmp_path):
    from cifd_clip.classify.data import open_set

    train, val = open_set(shapes["data"], "train"), open_set(shapes["data"], "val")
    assert (len(train), len(val), train.num_classes) == (96, 48, 36)
    assert train.image(0).size == (32, 32) and 0 <= int(train.labels[0]) < 36

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = tmp_path / "evil" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "meta"):
        (folder / name).write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="is not a readable CIFAR-100 pickle"):
        open_set(f"cifar100:{tmp_path / 'evil'}", "train")
    assert not (tmp_path / "pwned").exists()


def test_image_folder_and_wds_cls_shards(tmp_path):
    from PIL import Image

    from cifd_clip.classify.data import open_set
    from cifd_clip.data.shards import write_shard

    for split in ("train", "val"):
        for c, colour in enumerate(("red", "blue")):
            (tmp_path / "folder" / split / f"class{c}").mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), colour).save(tmp_path / "folder" / split / f"class{c}" / f"{i}.png")
    folder = open_set(f"imagefolder:{tmp_path / 'folder'}", "train")
    assert (len(folder), folder.classnames) == (6, ["class0", "class1"]) and folder.image(4).getpixel((0, 0))[2] > 200
    samples = []
    for i in range(5):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(buf, format="PNG")
        samples.append({"__key__": f"s{i}", "png": buf.getvalue(), "cls": str(i % 3)})
    write_shard(tmp_path / "wds" / "0.tar", samples)
    shards = open_set(f"wds:{tmp_path / 'wds' / '0.tar'}", "train")
    assert list(shards.labels) == [0, 1, 2, 0, 1] and shards.image(3).getpixel((0, 0))[0] == 120
    with pytest.raises(UserError, match="must name its kind"):
        open_set(str(tmp_path), "train")


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["resnet8x4", "resnet32x4", "resnet20", "resnet56", "wrn_40_2", "wrn_40_1",
                                  "wrn_16_2", "vgg13", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "cnn2",
                                  "cnn10"])
def test_every_cifar_model_builds_and_takes_a_step(name):
    from cifd_clip.classify.zoo import build_classifier

    torch.manual_seed(0)
    net = build_classifier(name, 100)
    fmap, features, logits = net.forward_with_map(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 100) and features.shape == (4, net.feature_dim) and fmap.dim() == 4
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "mobilenetv1_100"])
def test_imagenet_models_come_from_torchvision_and_timm(name):
    from cifd_clip.classify.zoo import build_classifier

    net = build_classifier(name, 10)
    features, logits = net(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 10) and features.shape == (1, net.feature_dim)


# ---------------------------------------------------------------- losses, against hand computations


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_is_inter_and_intra_class_pearson_distance():
    from cifd_clip.core.losses import dist_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    ps = [_softmax([v / 2 for v in r]) for r in s.tolist()]
    pt = [_softmax([v / 2 for v in r]) for r in t.tolist()]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / 3
    intra = 1 - sum(_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(4)) / 4
    assert dist_loss(t, s, 2.0, beta=1.0, gamma=2.0).item() == pytest.approx(4 * (inter + 2 * intra), rel=1e-4)


def test_normkd_divides_each_samples_logits_by_their_std():
    from cifd_clip.core.losses import kl_divergence, normalized_kd

    s, t = torch.tensor([[4.0, 1.0, 2.0]]), torch.tensor([[0.0, 3.0, 9.0]])
    expected = kl_divergence(t / t.std(), s / s.std(), 1.5)
    assert expected.item() > 0.1  # the two differ after normalisation
    assert normalized_kd(t, s, 1.5).item() == pytest.approx(expected.item(), rel=1e-4)


def test_in_batch_contrastive_and_attention_transfer():
    from cifd_clip.core.losses import attention_transfer, in_batch_contrastive

    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    # logits [[2, 0], [0, 2]] (cosine / 0.5): each row's CE against its own column
    ce = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert in_batch_contrastive(a, a, 0.5).item() == pytest.approx(ce, rel=1e-5)
    fs, ft = torch.ones(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)
    ft[0, :, 0, 0] = 1.0  # all attention on one pixel
    # a_S = (.5,.5,.5,.5), a_T = (1,0,0,0): mean of squared differences
    assert attention_transfer(fs, ft).item() == pytest.approx(((0.5 - 1) ** 2 + 3 * 0.25) / 4, rel=1e-5)


def test_factor_transfer_is_l1_of_normalised_factors():
    from cifd_clip.core.losses import factor_transfer

    s, t = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    s[..., 0], t[..., 1] = 3.0, 5.0  # (1, 0) against (0, 1) once normalised
    assert factor_transfer(s, t).item() == pytest.approx(1.0)


def test_classification_rdm_loss_has_ce_kl_distortion_and_rate():
    from cifd_clip.core.rdm import RDMFamily
    from cifd_clip.rdm.training import family_loss

    family = RDMFamily.build({"image": 8}, [1.0], num_classes=5, hidden_dim=16, bottleneck_dim=4,
                             normalize_input=False)
    batch = {"t_image_emb": torch.randn(6, 8), "t_logits": torch.randn(6, 5), "label": torch.arange(6) % 5}
    loss, terms = family_loss(family, batch)
    assert {k.split("/")[-1] for k in terms} == {"rdm_distortion", "rdm_rate", "rdm_aux", "rdm_ce", "rdm_kl"}
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- stages end to end


def test_kd_takd_and_dgkd_run_in_the_same_loop(shapes):
    assert distill(shapes, "ta", "--loss", "kd", "--teacher", shapes["teacher"]) == 0  # the assistant
    assistant = shapes["root"] / "runs" / "ta" / "checkpoints" / "epoch_1.pt"
    assert distill(shapes, "takd", "--loss", "kd", "--teacher", assistant) == 0  # TAKD: taught by the assistant
    assert distill(shapes, "dgkd", "--loss", "kd", "--teacher", shapes["teacher"], "--assistants", assistant,
                   "--kd-dropout", "0.25") == 0
    terms = last_terms(shapes, "dgkd")
    assert {"ce", "kd_teacher", "kd_ta1"} <= set(terms)
    cost = {run: json.loads((shapes["root"] / "runs" / run / "summary.json").read_text())["macs_per_sample"]
            for run in ("takd", "dgkd")}  # the paper's Fig. 1b, per training sample
    assert cost["dgkd"]["assistants"] == cost["takd"]["teacher"] > 0 and cost["dgkd"]["total"] > cost["takd"]["total"]
    for loss, term in (("dist", "dist"), ("normkd", "normkd"), ("crd", "crd"), ("at", "at"), ("ft", "ft")):
        assert distill(shapes, loss, "--loss", loss, "--teacher", shapes["teacher"]) == 0
        assert term in last_terms(shapes, loss)


def _tensorboard_scalars(folder) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next(folder.glob("events.out.tfevents.*"))))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_cifd_with_cached_targets_and_rdms_end_to_end(shapes):
    root = shapes["root"]
    assert main(["cls-embed", "--teacher", str(shapes["teacher"]), "--train-data", shapes["data"], "--out",
                 str(root / "cache"), "--augmentations", "3", "--batch-size", "32"]) == 0
    assert main(["cls-train-rdm", "--cache", str(root / "cache"), "--out", str(root / "rdm"), "--epochs", "2",
                 "--hidden-dim", "32", "--bottleneck-dim", "8", "--holdout-fraction", "0.2",
                 "--report-to", "tensorboard"]) == 0
    report = json.loads((root / "rdm" / "rdm_eval.json").read_text())
    assert [r["rate_weight"] for r in report["rdms"]] == [0.6, 0.8, 1.0] and "acc1" in report["rdms"][0]
    rdm_scalars = _tensorboard_scalars(root / "rdm" / "tensorboard")
    assert len(rdm_scalars["val/image/R=0.6/acc1"]) == 2 and "train/image/R=1/rdm_rate" in rdm_scalars  # per epoch
    assert distill(shapes, "cifd", "--loss", "cifd", "--cache", root / "cache", "--rdm", root / "rdm" / "rdm.pt",
                   "--eval-every-epochs", "1", "--report-to", "tensorboard") == 0
    terms = last_terms(shapes, "cifd")
    assert {"ce", "kd_teacher", "kd_rdm1", "kd_rdm3", "emb_teacher", "emb_rdm2", "rate"} <= set(terms)
    summary = json.loads((root / "runs" / "cifd" / "summary.json").read_text())
    assert 0 <= summary["eval"]["val"]["metrics"]["acc1"] <= 1
    scalars = _tensorboard_scalars(root / "runs" / "cifd" / "tensorboard")  # open_clip_train's tags
    assert scalars["val/acc1"] == [(summary["steps"], pytest.approx(summary["eval"]["val"]["metrics"]["acc1"]))]
    assert {"train/loss", "train/kd_teacher", "train/lr"} <= set(scalars)
    cost = summary["macs_per_sample"]  # cached targets: no teacher forward pass, the RDMs are nearly free
    assert cost["teacher"] == 0 and 0 < cost["rdms"] < 0.01 * cost["student"]


def test_cached_teacher_outputs_are_the_teachers_on_the_replayed_view(shapes):
    from cifd_clip.classify.cache import ClassificationCache
    from cifd_clip.classify.data import open_set, recipe_for
    from cifd_clip.classify.loader import Views
    from cifd_clip.classify.models import load_classifier

    cache_dir = shapes["root"] / "cache_replay"
    assert main(["cls-embed", "--teacher", str(shapes["teacher"]), "--train-data", shapes["data"], "--out",
                 str(cache_dir), "--augmentations", "4", "--dtype", "float32"]) == 0
    data = open_set(shapes["data"], "train")
    views = Views(data, recipe_for("cifar"), train=True)
    ClassificationCache(cache_dir, data).attach(views, seed=0)
    teacher = load_classifier(str(shapes["teacher"])).net.eval()
    for index in (0, 5, 17):
        item = views[index]
        with torch.no_grad():
            features, logits = teacher(item["image"][None])
        assert torch.allclose(features[0], item["t_image_emb"], atol=1e-4)
        assert torch.allclose(logits[0], item["t_logits"], atol=1e-4)


def test_a_persistent_worker_draws_each_epochs_views_and_resumes_exactly(tmp_path):
    """The classification stream's one persistent worker gets the epoch through shared memory: each epoch's
    random views (and a resumed epoch's) are those of a worker started afresh for that epoch."""
    from cifd_clip.classify.data import open_set, recipe_for
    from cifd_clip.classify.loader import ClassificationStream, Views
    from cifd_clip.classify.shapes import write_shapes_cifar

    write_shapes_cifar(tmp_path, train_samples=24, test_samples=1)
    data = open_set(f"cifar100:{tmp_path}", "train")

    def stream(persistent):
        views = Views(data, recipe_for("cifar"), train=True, seed=3)
        return ClassificationStream(views, batch_size=4, workers=1, seed=3, persistent_workers=persistent)

    def views(s, epoch, skip=0):
        return [tuple(v) for b in s.iterate(epoch, skip_batches=skip) for v in b["view"].tolist()]

    kept = stream(True)
    assert kept.dataloader.persistent_workers and not stream(False).dataloader.persistent_workers
    first, second, resumed = views(kept, 0), views(kept, 1), views(kept, 1, skip=2)
    assert first != second
    assert first == views(stream(False), 0) and second == views(stream(False), 1)
    assert resumed == second[2 * 4:]


def test_resume_mid_epoch_reaches_the_same_weights(shapes):
    common = ["--teacher", shapes["teacher"], "--loss", "kd", "--epochs", "2"]
    assert distill(shapes, "full", *common) == 0
    assert distill(shapes, "cut", *common, "--stop-after-steps", "7") == 0
    assert distill(shapes, "cut", *common, "--resume", "latest") == 0
    full = torch.load(shapes["root"] / "runs" / "full" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    cut = torch.load(shapes["root"] / "runs" / "cut" / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_export_loads_back_with_the_architectures_own_constructor(shapes, tmp_path):
    from cifd_clip.classify.data import open_set, recipe_for, view_tensor
    from cifd_clip.classify.models import load_classifier
    from cifd_clip.classify.zoo import build_classifier

    assert main(["cls-export", "--checkpoint", str(shapes["teacher"]), "--out", str(tmp_path / "e")]) == 0
    net = build_classifier("cnn4", 36)
    net.load_state_dict(torch.load(tmp_path / "e" / "cnn4.pt", weights_only=True))
    image = view_tensor(recipe_for("cifar"), open_set(shapes["data"], "val").image(0), (0, 0, 1, 1, 0), False)[None]
    trained = load_classifier(str(shapes["teacher"])).net
    net.eval(), trained.eval()
    assert torch.equal(net(image)[1], trained(image)[1])
    assert "build_classifier('cnn4', 36)" in (tmp_path / "e" / "README.md").read_text()


def test_classification_stage_mistakes_are_one_sentence(shapes, capsys):
    assert distill(shapes, "bad1", "--loss", "kd") == 2
    assert "needs --teacher" in capsys.readouterr().err
    assert distill(shapes, "bad2", "--loss", "kd", "--teacher", shapes["teacher"], "--embedding-weight", "3") == 2
    assert "--embedding-weight is not used by --loss kd" in capsys.readouterr().err
    not_a_model = shapes["root"] / "not_a_model.pt"
    not_a_model.write_text("x")
    assert distill(shapes, "bad3", "--loss", "kd", "--teacher", not_a_model) == 1
    assert "not a PyTorch checkpoint" in capsys.readouterr().err


def test_the_paper_recipes_start(shapes, tmp_path):
    """recipes/classification/: every CIFAR-100 step, and the ImageNet ones on a tiny ImageFolder, run a step."""

    from PIL import Image

    recipes = Path(__file__).resolve().parents[1] / "recipes" / "classification"
    runs, common = str(tmp_path / "runs"), ["--stop-after-steps", "1", "--workers", "0", "--batch-size", "8"]
    assert main(["cls-train", "--config", str(recipes / "cifar100-teacher.yaml"), "--model", "cnn2", "--train-data",
                 shapes["data"], "--logs", runs, "--name", "teacher", *common]) == 0
    assert main(["cls-embed", "--config", str(recipes / "cifar100-embed.yaml"), "--teacher", str(shapes["teacher"]),
                 "--train-data", shapes["data"], "--out", str(tmp_path / "cache")]) == 0
    assert main(["cls-train-rdm", "--config", str(recipes / "cifar100-rdm.yaml"), "--cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "rdm"), "--epochs", "1", "--holdout-fraction", "0.2"]) == 0
    assert main(["cls-train-rdm", "--config", str(recipes / "imagenet-rdm.yaml"), "--cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "rdm-inet"), "--epochs", "1", "--holdout-fraction", "0.2"]) == 0
    for recipe in sorted(recipes.glob("cifar100-student-*.yaml")):
        extra = ["--rdm", str(tmp_path / "rdm" / "rdm.pt")] if recipe.stem.endswith("cifd") else []
        if recipe.stem.endswith("-ft"):  # one epoch of its paraphraser stage, not the recipe's 30
            extra = ["--ft-paraphraser-epochs", "1"]
        assert main(["cls-distill", "--config", str(recipe), "--model", "cnn2", "--teacher", str(shapes["teacher"]),
                     "--train-data", shapes["data"], "--logs", runs, "--name", recipe.stem, *extra, *common]) == 0, recipe
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "inet" / split / f"n0{c}").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (80, 70), (90 * c, 40 * i, 0)).save(tmp_path / "inet" / split / f"n0{c}" / f"{i}.jpg")
    small = ["--image-size", "64", "--precision", "fp32", *common]
    assert main(["cls-train", "--config", str(recipes / "imagenet-teacher.yaml"), "--model", "resnet18",
                 "--train-data", f"imagefolder:{tmp_path / 'inet'}", "--logs", runs, "--name", "r18", *small]) == 0
    assert main(["cls-distill", "--config", str(recipes / "imagenet-student-cifd.yaml"), "--model", "resnet18",
                 "--teacher", str(tmp_path / "runs" / "r18" / "checkpoints" / "epoch_latest.pt"),
                 "--train-data", f"imagefolder:{tmp_path / 'inet'}", "--logs", runs, "--name", "r18-cifd",
                 *small]) == 0


@pytest.mark.slow
def test_the_classification_demo_at_small_scale(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "cifd_clip", "cls-demo", "--out", str(out), "--scale", "small",
                             "--no-stream"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["models"]) >= {"teacher", "no KD", "KD", "TAKD", "DGKD", "CIFD (3 RDMs + IBM)"}
    cost = results["relative_cost"]  # the paper's Fig. 1b: no assistant to train
    assert cost["CIFD"] < cost["TAKD"] and cost["CIFD"] < cost["DGKD"] and "DGKD" in results["verdict"][-1]
    report = (out / "report" / "report.md").read_text()
    assert "cifd-clip cls-train-rdm" in report and (out / "report" / "rate_distortion.png").is_file()
    assert "mean ± std" in report.split("## Results")[0]  # the seed spread the study measured
    assert "What CIFD's parts add" in report.split("## Results")[0]
    # the seed study reruns exactly the demo's five student commands
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
    from demo_seeds import student_commands
    commands = student_commands(out)
    assert sorted(commands) == ["student-cifd", "student-dgkd", "student-kd", "student-nokd", "student-takd"]
    assert all(argv[0] in ("cls-train", "cls-distill") for argv in commands.values())
    assert commands["student-nokd"][commands["student-nokd"].index("--train-data") + 1] == f"cifar100:{out / 'data'}"
    # ... and the RDM ordering study the demo's own teacher, embed and RDM commands; the teacher reads the larger set
    from rdm_ordering import demo_commands
    steps = demo_commands(out)
    assert [steps[k][0] for k in ("teacher", "embed", "rdm")] == ["cls-train", "cls-embed", "cls-train-rdm"]
    assert steps["teacher"][steps["teacher"].index("--train-data") + 1] == f"cifar100:{out / 'data-teacher'}"
    assert results["models"]["teacher"]["acc1"] > results["models"]["no KD"]["acc1"]


def test_dry_run_prints_the_cost_and_trains_nothing(shapes, capsys):
    """`--dry-run` projects the run's MACs and A100-hours (teacher included) and leaves no run behind."""
    assert distill(shapes, "dry", "--loss", "kd", "--teacher", shapes["teacher"], "--dry-run") == 0
    out = capsys.readouterr().out
    assert "A100-hours" in out and "96 samples x 1 epochs" in out and "teacher" in out
    assert not (shapes["root"] / "runs" / "dry").exists()
