"""Information Bottleneck Module: noise only in training, rate term, projection, DDP-safe parameters."""
import math

import pytest
import torch

from cifd_clip.errors import UserError
from cifd_clip.ibm import InformationBottleneck

torch.set_num_threads(1)


def test_noise_is_uniform_half_width_in_training_and_off_in_eval():
    ibm = InformationBottleneck(6, 10)
    w = torch.randn(512, 6)
    ibm.train()
    noise = ibm(w)["noisy"] - w
    assert noise.abs().max() <= 0.5 and noise.abs().max() > 0.45
    assert abs(noise.mean().item()) < 0.03 and noise.var().item() == pytest.approx(1 / 12, rel=0.1)
    ibm.eval()
    out = ibm(w)
    assert torch.equal(out["noisy"], w)
    assert torch.allclose(out["output"], ibm.decoder(w))
    assert torch.equal(out["output"], ibm(w)["output"])  # deterministic at inference


def test_rate_is_minus_log2_of_the_factorised_density():
    ibm = InformationBottleneck(4, 4).eval()
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
    ibm = InformationBottleneck(4, 8, hidden_dim=16)
    opt = torch.optim.Adam([w, *ibm.parameters()], lr=0.05)
    first = ibm(w)["rate"].mean().item()
    for _ in range(60):
        out = ibm(w)
        loss = out["rate"].mean() + 0.01 * out["output"].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ibm(w)["rate"].mean().item() < first
    assert ibm.density.quantiles.grad is None  # frozen: unused under DDP otherwise
    assert all(p.grad is not None for p in ibm.parameters() if p.requires_grad)
    assert [type(m).__name__ for m in ibm.decoder] == ["Linear", "GELU", "Linear"]


def test_wrong_width_is_one_sentence():
    with pytest.raises(UserError, match=r"\[batch, 4\]"):
        InformationBottleneck(4, 8)(torch.randn(2, 5))
