"""Rate-Distortion Modules: architecture, rate/distortion behaviour, checkpoint round trip."""
import math

import pytest
import torch
import torch.nn.functional as F

from cifd_clip.errors import UserError
from cifd_clip.core.rdm import RateDistortionConfig, RateDistortionModule, RDMFamily
from cifd_clip.rdm.training import evaluate_family, ordering_warnings, train_family

torch.set_num_threads(1)
DIM = 32


def synthetic_embeddings(n=1536, dim=DIM, latent=8, seed=0):
    """Unit vectors near a low-dimensional subspace, like CLIP embeddings (paired image/text views);
    `seed` draws new samples from the same distribution."""
    basis = torch.randn(latent, dim, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent, generator=g) * torch.linspace(2.0, 0.3, latent)
    img = F.normalize(z @ basis + 0.05 * torch.randn(n, dim, generator=g), dim=-1)
    txt = F.normalize(z @ basis + 0.05 * torch.randn(n, dim, generator=g), dim=-1)
    return {"t_image_emb": img, "t_text_emb": txt, "key": [f"{i:06d}" for i in range(n)]}


def batches_of(data, batch_size=128, seed=0):
    def epoch_batches(epoch):
        perm = torch.randperm(len(data["key"]), generator=torch.Generator().manual_seed(seed + epoch))
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            yield {"t_image_emb": data["t_image_emb"][idx], "t_text_emb": data["t_text_emb"][idx],
                   "key": [data["key"][i] for i in idx]}
    return epoch_batches


@pytest.fixture(scope="module")
def trained():
    """3 rates x 2 modalities of tiny RDMs, trained together for ~400 steps (a few seconds)."""
    torch.manual_seed(0)
    data = synthetic_embeddings()
    family = RDMFamily.build({"image": DIM, "text": DIM}, [10.0, 100.0, 1000.0], hidden_dim=64, bottleneck_dim=16)
    stats = train_family(family, batches_of(data), epochs=25, lr=3e-3, steps_per_epoch=12, holdout_fraction=0.1)
    held_out = synthetic_embeddings(n=512, seed=1)
    return family, stats, evaluate_family(family, held_out, retrieval=True), held_out


def test_default_layout_is_two_plus_two_layers_with_activation_after_1_and_3():
    rdm = RateDistortionModule(RateDistortionConfig(input_dim=12, hidden_dim=20, bottleneck_dim=4))
    kinds = [type(m).__name__ for m in rdm.encoder] + ["|"] + [type(m).__name__ for m in rdm.decoder]
    assert kinds == ["Linear", "GELU", "Linear", "|", "Linear", "GELU", "Linear"]
    assert rdm.encoder[-1].out_features == 4 and rdm.decoder[-1].out_features == 12
    deep = RateDistortionModule(RateDistortionConfig(input_dim=12, encoder_layers=3, decoder_layers=1,
                                                     activation_after=[1], activation="relu"))
    assert [type(m).__name__ for m in deep.encoder] == ["Linear", "ReLU", "Linear", "Linear"]
    assert [type(m).__name__ for m in deep.decoder] == ["Linear"]


def test_noise_in_training_rounding_when_teaching():
    rdm = RateDistortionModule(RateDistortionConfig(input_dim=8, hidden_dim=16, bottleneck_dim=4))
    x = torch.randn(5, 8)
    rdm.train()
    a, b = rdm(x), rdm(x)
    assert not torch.equal(a["rate"], b["rate"])  # the rate reads fresh noise each call
    # ... while the decoder reads the rounded values it will see when teaching (straight-through gradient)
    assert torch.equal(a["reconstruction"], b["reconstruction"])
    assert torch.allclose(a["reconstruction"], rdm.teach(x))
    a["reconstruction"].sum().backward()
    assert rdm.encoder[0].weight.grad.abs().sum() > 0
    noisy = RateDistortionModule(RateDistortionConfig(input_dim=8, hidden_dim=16, bottleneck_dim=4,
                                                      train_quantization="noise")).train()
    assert not torch.equal(noisy(x)["reconstruction"], noisy(x)["reconstruction"])  # the paper's noisy decoder input
    first = rdm.teach(x)
    assert rdm.training  # teach restores the mode
    assert torch.equal(first, rdm.teach(x))
    rdm.eval()
    y = rdm.encoder(rdm.prepare_input(x))
    medians = rdm.bottleneck.quantiles[:, 0, 1]
    assert torch.allclose(rdm.decoder(torch.round(y - medians) + medians), first)


def test_loss_is_r_times_distortion_plus_bits():
    rdm = RateDistortionModule(RateDistortionConfig(input_dim=8, rate_weight=7.0, hidden_dim=16, bottleneck_dim=4))
    x = torch.randn(6, 8)
    out = rdm(x)
    terms = rdm.loss(out)
    xn = x / x.norm(dim=-1, keepdim=True)
    expected_d = sum(((xn[i] - out["reconstruction"][i]) ** 2).sum().item() for i in range(6)) / 6
    expected_bits = sum(-math.log2(p) for p in out["likelihoods"].flatten().tolist()) / 6
    assert terms["rdm_distortion"].item() == pytest.approx(7.0 * expected_d, rel=1e-5)
    assert terms["rdm_rate"].item() == pytest.approx(expected_bits, rel=1e-5)
    assert terms["rdm_aux"].item() == pytest.approx(rdm.bottleneck.loss().item())


def test_classification_head_adds_ce_and_tempered_kl():
    cfg = RateDistortionConfig(input_dim=8, hidden_dim=16, bottleneck_dim=4, num_classes=3, normalize_input=False,
                               distortion="smooth_l1", kl_weight=0.5, temperature=2.0)
    rdm = RateDistortionModule(cfg)
    x, y, t = torch.randn(4, 8), torch.tensor([0, 2, 1, 1]), torch.randn(4, 3)
    out = rdm(x)
    terms = rdm.loss(out, labels=y, teacher_logits=t)
    v = out["logits"]
    ce = sum(-torch.log_softmax(v[i], -1)[y[i]].item() for i in range(4)) / 4
    p, logq = torch.softmax(t / 2, -1), torch.log_softmax(v / 2, -1)
    kl = sum((p[i] * (torch.log(p[i]) - logq[i])).sum().item() for i in range(4)) / 4
    assert terms["rdm_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["rdm_kl"].item() == pytest.approx(0.5 * 4 * kl, rel=1e-4)
    diff = (x - out["reconstruction"]).abs()
    sl1 = torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum(-1).mean().item()
    assert out["distortion"].mean().item() == pytest.approx(sl1, rel=1e-5)
    headless = RateDistortionModule(RateDistortionConfig(input_dim=8, hidden_dim=16, bottleneck_dim=4))
    with pytest.raises(UserError, match="no classification head"):
        headless.loss(headless(x), labels=y)


def test_rate_rises_and_distortion_falls_with_r(trained):
    family, stats, report, _ = trained
    assert report["warnings"] == []
    for modality in ("image", "text"):
        rows = [r for r in report["rdms"] if r["modality"] == modality]
        assert [r["rate_weight"] for r in rows] == [10.0, 100.0, 1000.0]
        rates, mses = [r["rate_bits"] for r in rows], [r["mse"] for r in rows]
        assert rates[0] < rates[1] < rates[2], rates
        assert mses[0] > mses[1] > mses[2], mses
        assert rows[-1]["cosine"] > 0.95
        # a stronger RDM also retrieves better against the teacher's other modality
        metric = "text_retrieval_recall@1" if modality == "image" else "image_retrieval_recall@1"
        assert rows[-1][metric] > rows[0][metric]


def test_rounded_rate_is_close_to_the_noisy_estimate(trained):
    _, _, report, _ = trained
    for row in report["rdms"]:
        if row["rate_weight"] >= 100:  # at a few bits per sample rounding can only get cheaper than noise
            assert row["rate_bits"] == pytest.approx(row["noisy_rate_bits"], rel=0.2), row
        assert row["rate_bits"] <= row["noisy_rate_bits"] + 1.0


def test_checkpoint_reload_gives_identical_outputs(trained, tmp_path):
    family, _, _, held_out = trained
    family.meta["teacher"] = "synthetic"
    path = family.save(tmp_path / "rdm.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["rdm.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert set(raw["modalities"]) == {"image", "text"}
    loaded = RDMFamily.load(path)
    assert loaded.rates("text") == [10.0, 100.0, 1000.0] and loaded.meta["teacher"] == "synthetic"
    for modality, key in (("image", "t_image_emb"), ("text", "t_text_emb")):
        for a, b in zip(family.teach(modality, held_out[key]), loaded.teach(modality, held_out[key])):
            assert torch.equal(a, b)
        for a, b in zip(family.rdms(modality), loaded.rdms(modality)):
            assert torch.equal(a.eval()(held_out[key])["rate"], b(held_out[key])["rate"])


def test_family_teaches_all_rdms_at_once_as_each_would_alone(trained):
    family, _, _, held_out = trained
    for modality, key in (("image", "t_image_emb"), ("text", "t_text_emb")):
        together, alone = family.teach(modality, held_out[key]), family.teach_each(modality, held_out[key])
        assert len(together) == len(alone) == 3
        for a, b in zip(together, alone):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # a weight changed in place (training, loading) is seen: the stacked weights are rebuilt
    fresh = RDMFamily.build({"image": 12}, [1.0, 2.0], hidden_dim=8, bottleneck_dim=3, encoder_layers=1,
                            decoder_layers=3, activation="silu")
    x = torch.randn(5, 12)
    fresh.teach("image", x)
    with torch.no_grad():
        fresh.rdms("image")[1].decoder[0].weight.mul_(2)
    for a, b in zip(fresh.teach("image", x), fresh.teach_each("image", x)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # RDMs of different layouts fall back to one after another
    mixed = RDMFamily({"image": [RateDistortionModule(RateDistortionConfig(input_dim=12, hidden_dim=h, bottleneck_dim=3,
                                                                           rate_weight=r)) for h, r in ((8, 1.0), (6, 2.0))]})
    assert all(torch.equal(a, b) for a, b in zip(mixed.teach("image", x), mixed.teach_each("image", x)))


def test_bad_checkpoints_and_configs_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RDMFamily.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        RDMFamily.load(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an RDM checkpoint"):
        RDMFamily.load(tmp_path / "other.pt")
    with pytest.raises(UserError, match="distortion"):
        RateDistortionConfig(input_dim=4, distortion="l3").validate()
    with pytest.raises(UserError, match="distinct"):
        RDMFamily.build({"image": 4}, [1.0, 1.0])
    with pytest.raises(UserError, match="no 'audio'"):
        RDMFamily.build({"image": 4}, [1.0], hidden_dim=8, bottleneck_dim=2).teach("audio", torch.zeros(1, 4))


def test_ordering_warning_names_the_offending_rates():
    rows = [{"modality": "image", "rate_weight": 1.0, "rate_bits": 5.0, "mse": 0.1},
            {"modality": "image", "rate_weight": 2.0, "rate_bits": 4.0, "mse": 0.05}]
    (warning,) = ordering_warnings(rows)
    assert "R=2" in warning and "rate 4.00 <= 5.00" in warning


def test_rate_continuation_starts_every_rdm_from_the_highest_rate_trained_alone():
    """Stage 1 trains the highest R of each modality alone, stage 2 every RDM from its weights: with a learning
    rate of ~0 every RDM ends where that one ended, while side by side each keeps its own initialisation."""
    from cifd_clip.rdm.training import training_stages

    data = synthetic_embeddings(n=256)
    family = RDMFamily.build({"image": DIM, "text": DIM}, [10.0, 100.0, 1000.0], hidden_dim=16, bottleneck_dim=4)
    stages = training_stages(family, continuation=True)
    assert [[(m, r.rate_weight) for m, r in stage] for stage in stages] == [
        [("image", 1000.0), ("text", 1000.0)],
        [("image", 10.0), ("image", 100.0), ("image", 1000.0), ("text", 10.0), ("text", 100.0), ("text", 1000.0)]]
    assert len(training_stages(family, continuation=False)) == 1
    single = RDMFamily.build({"image": DIM}, [100.0], hidden_dim=16, bottleneck_dim=4)
    assert len(training_stages(single, continuation=True)) == 1  # nothing to start from: no second stage

    def first_layers(f):
        return [r.encoder[0].weight.detach().clone() for r in f.rdms("image")]

    torch.manual_seed(0)
    stats = train_family(family, batches_of(data), epochs=1, lr=1e-30, density_lr_factor=1.0, steps_per_epoch=2,
                         continuation=True)
    assert stats.steps == 2 * 2  # one pass per stage
    low, mid, high = first_layers(family)
    assert torch.equal(low, high) and torch.equal(mid, high)
    torch.manual_seed(0)
    apart = RDMFamily.build({"image": DIM, "text": DIM}, [10.0, 100.0, 1000.0], hidden_dim=16, bottleneck_dim=4)
    train_family(apart, batches_of(data), epochs=1, lr=1e-30, density_lr_factor=1.0, steps_per_epoch=2,
                 continuation=False)
    low, mid, high = first_layers(apart)
    assert not torch.equal(low, high) and not torch.equal(mid, high)


def test_each_rdm_keeps_its_best_scored_epoch():
    """`score` (held out, higher is better) picks each RDM's epoch, not its last."""
    data = synthetic_embeddings(n=256)
    family = RDMFamily.build({"image": DIM}, [10.0, 100.0], hidden_dim=16, bottleneck_dim=4)
    seen = []

    def score(rdm):  # prefers the first epoch of each stage
        seen.append((rdm.rate_weight, rdm.encoder[0].weight.detach().clone()))
        return -len([s for s in seen if s[0] == rdm.rate_weight])

    torch.manual_seed(0)
    train_family(family, batches_of(data, batch_size=64), epochs=3, lr=1e-2, steps_per_epoch=4, score=score,
                 continuation=True)
    low, high = family.rdms("image")
    low_epochs = [w for r, w in seen if r == 10.0]
    assert len(low_epochs) == 3 and torch.equal(low.encoder[0].weight, low_epochs[0])
    assert not torch.equal(low_epochs[0], low_epochs[-1])
    high_stage_two = [w for r, w in seen if r == 100.0][3:]  # epochs 1-3 of stage 2 (1-3 of stage 1 came first)
    assert torch.equal(high.encoder[0].weight, high_stage_two[0])


def test_finalize_keeps_the_rounding_the_decoder_trained_with():
    """finalize() builds the coding tables without moving the medians training rounded at: re-estimated
    medians shift a channel's rounding (docs/studies/rdm-stall.md: one R = 300 RDM's MSE rose 2.7-fold)."""
    torch.manual_seed(0)
    data = synthetic_embeddings(n=512)
    family = RDMFamily.build({"image": DIM}, [100.0], hidden_dim=64, bottleneck_dim=16)
    rdm = family.rdms("image")[0]
    train_family(family, batches_of(data), epochs=3, lr=3e-3, steps_per_epoch=4)
    x = data["t_image_emb"]
    with torch.no_grad():  # medians that lag their density (rdm_stall.py saw lags up to 0.18 of a step)
        rdm.bottleneck.quantiles[:, 0, 1] += 0.3
    trained_medians = rdm.bottleneck.quantiles[:, 0, 1].clone()
    before = rdm.teach(x)
    rdm.finalize()
    assert torch.equal(rdm.bottleneck.quantiles[:, 0, 1], trained_medians)
    assert torch.equal(rdm.teach(x), before)
    # the tails were re-estimated around them and the range coder decodes what rounding gives
    y = rdm.encoder(rdm.prepare_input(x[:8]))
    decoded = rdm.bottleneck.decompress(rdm.bottleneck.compress(y[:, :, None, None]), (1, 1))
    rounded = torch.round(y - trained_medians) + trained_medians
    assert torch.allclose(decoded[:, :, 0, 0], rounded, atol=1e-5)
