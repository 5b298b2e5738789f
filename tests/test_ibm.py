"""Information Bottleneck Module: noise only in training, rate term, input scaling, decoders, DDP-safe parameters."""
import math

import pytest
import torch

from cifd_clip.core.ibm import InformationBottleneck, IsometricDecoder, SharedDecoder, make_decoder
from cifd_clip.errors import UserError

torch.set_num_threads(1)


def test_noise_is_uniform_half_width_in_training_and_off_in_eval():
    ibm = InformationBottleneck(6, input_kind="raw")
    w = torch.randn(512, 6)
    ibm.train()
    noise = ibm(w)["noisy"] - w
    assert noise.abs().max() <= 0.5 and noise.abs().max() > 0.45
    assert abs(noise.mean().item()) < 0.03 and noise.var().item() == pytest.approx(1 / 12, rel=0.1)
    ibm.eval()
    assert torch.equal(ibm(w)["noisy"], w)  # deterministic at inference


def test_normalized_input_has_unit_rms_whatever_the_towers_scale():
    ibm = InformationBottleneck(16).eval()
    for scale in (1e-3, 1.0, 1e3):
        z = ibm(scale * torch.randn(8, 16))["noisy"]
        assert torch.allclose(z.pow(2).mean(-1), torch.ones(8), rtol=1e-5)


def test_rate_is_minus_log2_of_the_factorised_density():
    ibm = InformationBottleneck(4, input_kind="raw").eval()
    w = torch.randn(3, 4)
    out = ibm(w)
    # the density of Ŵ's unit bin: r(w) = c(w + 1/2) - c(w - 1/2), c the learned cumulative (sigmoid of logits)
    eb = ibm.density
    values = w.t().unsqueeze(1)
    upper = torch.sigmoid(eb._logits_cumulative(values + 0.5, stop_gradient=True))
    lower = torch.sigmoid(eb._logits_cumulative(values - 0.5, stop_gradient=True))
    expected = [-sum(math.log2(max(p, 1e-9)) for p in (upper - lower)[:, 0, i].tolist()) for i in range(3)]
    assert out["rate"].tolist() == pytest.approx(expected, rel=1e-5)


def test_rate_term_trains_the_density_and_shrinks_the_embedding():
    torch.manual_seed(0)
    w = torch.nn.Parameter(3 * torch.randn(64, 4))
    ibm = InformationBottleneck(4, input_kind="raw")
    decoder = make_decoder(4, 8, hidden_dim=16)
    opt = torch.optim.Adam([w, *ibm.parameters(), *decoder.parameters()], lr=0.05)
    first = ibm(w)["rate"].mean().item()
    for _ in range(60):
        out = ibm(w)
        loss = out["rate"].mean() + 0.01 * decoder(out["noisy"]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ibm(w)["rate"].mean().item() < first
    assert ibm.density.quantiles.grad is None  # frozen: unused under DDP otherwise
    assert all(p.grad is not None for p in ibm.parameters() if p.requires_grad)
    assert [type(m).__name__ for m in decoder] == ["Linear", "GELU", "Linear"]


def test_without_noise_and_rate_the_input_passes_through():
    ibm = InformationBottleneck(5, noise=False, rate=False).train()
    w = torch.randn(3, 5)
    out = ibm(w)
    assert set(out) == {"noisy"} and torch.allclose(out["noisy"], w / w.norm(dim=-1, keepdim=True) * math.sqrt(5))
    assert not list(ibm.parameters())


def test_isometric_decoder_keeps_angles_and_maps_unit_rms_to_unit_length_after_training_steps():
    torch.manual_seed(0)
    decoder = IsometricDecoder(6, 10)
    opt = torch.optim.AdamW(decoder.parameters(), lr=0.01, weight_decay=0.1)
    x, target = torch.randn(16, 6), torch.randn(16, 10)
    for _ in range(5):  # the map stays orthogonal while it learns
        loss = (decoder(x) - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    cos = torch.nn.functional.cosine_similarity
    assert torch.allclose(cos(decoder(a), decoder(b)), cos(a, b), atol=1e-5)
    unit_rms = torch.nn.functional.normalize(a, dim=-1) * math.sqrt(6)
    assert torch.allclose(decoder(unit_rms).norm(dim=-1), torch.ones(4), atol=1e-5)


def test_shared_decoder_differs_between_modalities_only_by_an_offset():
    decoder = SharedDecoder(4, 6)
    with torch.no_grad():
        decoder.offsets[1].fill_(2.0)
    x = torch.randn(3, 4)
    assert torch.allclose(decoder(x, 1) - decoder(x, 0), torch.full((3, 6), 2.0))


def test_wrong_width_is_one_sentence():
    with pytest.raises(UserError, match=r"\[batch, 4\]"):
        InformationBottleneck(4)(torch.randn(2, 5))
    with pytest.raises(UserError, match="IBM input must be one of"):
        InformationBottleneck(4, input_kind="sphere")


@pytest.mark.parametrize("orthogonal_map", ["cayley", "matrix_exp"])
def test_isometric_decoder_weight_is_torchs_orthogonal_map_and_is_computed_once_per_image_text_pair(orthogonal_map):
    torch.manual_seed(0)
    # the low-rank path (3k < n for the exponential, 2k < n for Cayley) both ways, also with a generator far below
    # norm 1 (the rescaled block's other regime: `original` starts near norm 1), and the direct path
    # a generator of a trained decoder's size too (‖A‖₁ of several units: the demo's ends near 3.5)
    for student, target, size in ((4, 30, 0.3), (4, 30, 1e-3), (4, 30, 1.0), (30, 4, 0.3), (30, 4, 1.0),
                                  (6, 10, 0.3), (4, 7, 0.3)):
        decoder = IsometricDecoder(student, target, orthogonal_map)
        assert decoder.map.parametrizations.weight[0].orthogonal_map.name == orthogonal_map
        original = decoder.map.parametrizations.weight.original
        with torch.no_grad():
            if size < 0.01:
                original.copy_(size * torch.randn_like(original))
            else:
                original.add_(size * torch.randn_like(original))
        assert torch.allclose(decoder.weight(), decoder.map.weight, atol=1e-5)
        x, g = torch.randn(5, student), torch.randn(5, target)
        (decoder.scale * torch.nn.functional.linear(x, decoder.map.weight) * g).sum().backward()
        want, original.grad = original.grad, None
        (decoder(x, 0) * g).sum().backward()
        assert torch.allclose(original.grad, want, rtol=1e-3, atol=1e-5)
        original.grad = None
    q = decoder.weight(0)
    assert decoder.weight(1) is q  # the text call reuses the image call's Q ...
    assert decoder.weight(1) is not q  # ... once
    q = decoder.weight(0)
    q.sum().backward()
    assert decoder.weight(1) is not q  # never after a backward went through it


def test_image_and_text_bottlenecks_run_together_as_compressai_runs_each():
    from cifd_clip.core.ibm import run_bottlenecks
    torch.manual_seed(0)
    ibms = [InformationBottleneck(8), InformationBottleneck(8)]
    for ibm in ibms:  # trained-looking densities, not the init
        with torch.no_grad():
            for p in ibm.density.parameters():
                p.add_(0.3 * torch.randn_like(p))
    ws = [torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)]
    torch.manual_seed(1)
    together = run_bottlenecks(ibms, ws)
    torch.manual_seed(1)
    for ibm, w, out in zip(ibms, ws, together):
        z = torch.nn.functional.normalize(w, dim=-1) * math.sqrt(8)
        noisy, likelihood = ibm.density(z, training=True)  # CompressAI's own forward, same noise draws
        assert torch.equal(out["noisy"], noisy)
        assert torch.allclose(out["rate"], -torch.log2(likelihood).sum(-1), rtol=1e-5)
        grads = torch.autograd.grad(out["rate"].sum(), [w, *ibm.density.matrices], retain_graph=True)
        want = torch.autograd.grad(-torch.log2(likelihood).sum(), [w, *ibm.density.matrices])
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, want))


def test_matrix_exponential_gradient_is_as_accurate_as_torchs_for_large_gradients():
    from cifd_clip.core.ibm import matrix_exp
    torch.manual_seed(0)
    a = torch.randn(48, 48)
    a = ((a - a.T) * 0.02).requires_grad_()
    g = 30 * torch.randn(48, 48) / 48  # ‖G‖₁ ≈ 20-30, as in the CIFD step
    exact = torch.autograd.grad(torch.matrix_exp(a.double()), a, g.double())[0]
    ours = torch.autograd.grad(matrix_exp(a), a, g)[0].double()
    torchs = torch.autograd.grad(torch.matrix_exp(a), a, g)[0].double()
    assert torch.equal(matrix_exp(a), torch.matrix_exp(a))
    assert (ours - exact).norm() <= max((torchs - exact).norm(), 1e-6 * exact.norm())


def test_a_checkpoint_is_never_read_through_the_other_orthogonal_map():
    from cifd_clip.core.ibm import ORTHOGONAL_MAPS
    torch.manual_seed(0)
    exp_decoder = IsometricDecoder(4, 12, "matrix_exp")
    with torch.no_grad():
        exp_decoder.map.parametrizations.weight.original.add_(0.5)
    state = exp_decoder.state_dict()
    with pytest.raises(UserError, match="pass --ibm-orthogonal-map matrix_exp to continue it"):
        IsometricDecoder(4, 12, "cayley").load_state_dict(dict(state))
    # checkpoints from before the map was recorded hold no code: they were all written with the exponential
    old = {k: v for k, v in state.items() if k != "orthogonal_map_code"}
    with pytest.raises(UserError, match="matrix_exp"):
        IsometricDecoder(4, 12, "cayley").load_state_dict(dict(old))
    again = IsometricDecoder(4, 12, "matrix_exp")
    again.load_state_dict(old)
    assert torch.equal(again.weight(), exp_decoder.weight())
    assert int(IsometricDecoder(4, 12).orthogonal_map_code) == ORTHOGONAL_MAPS.index("cayley")  # the default
    # a checkpoint without an isometric decoder is not mistaken for one with the other map: its keys are missing
    result = IsometricDecoder(4, 12).load_state_dict({}, strict=False)
    assert "map.parametrizations.weight.original" in result.missing_keys
