"""Information Bottleneck Module (IBM): a training-only, noisy, rate-penalised layer on the student's
embedding that regularises it against overfitting to many RDM targets (the paper).

    Z = W (raw) or √d·W/‖W‖ (normalized);   Ŵ = Z + U(-0.5, 0.5) in train mode, Ŵ = Z in eval mode;
    rate = -log2 r(Ŵ) (bits/sample)

`r` is a factorised (Ballé) density, CompressAI's `EntropyBottleneck`. The decoder that maps Ŵ to the
teacher's width (Û = dec(Ŵ)) belongs to the distillation method, which may share one decoder between the
image and text IBMs (see `cifd_clip.distill.methods.CIFD`); `make_decoder` builds it.

Why "normalized": the noise has a fixed width of 1, so its strength depends on W's scale. A tower's raw
embedding can have any scale (tiny open_clip towers start with per-dimension values far below 0.5, so the
noise drowns them), and a student can escape the noise just by growing W. Scaling W to unit RMS per
dimension fixes the signal-to-noise ratio (≈ 12:1 in power), whatever the tower. The contrastive term
reads W/‖W‖ either way, so the scaling changes nothing the exported student computes.

The IBM exists only while distilling: it is checkpointed with the student (inside the module DDP wraps)
but dropped at inference and export — the student's embedding W is used as is.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..entropy import EntropyBottleneck
from ..errors import UserError

INPUTS = ("normalized", "raw")
ORTHOGONAL_MAPS = ("cayley", "matrix_exp")


def make_decoder(input_dim: int, output_dim: int, hidden_dim: Optional[int] = None) -> nn.Module:
    """`hidden_dim=None`: one linear layer; otherwise Linear → GELU → Linear."""
    if input_dim < 1 or output_dim < 1 or (hidden_dim is not None and hidden_dim < 1):
        raise UserError("IBM widths must be positive integers")
    if hidden_dim is None:
        return nn.Linear(input_dim, output_dim)
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))


class SharedDecoder(nn.Module):
    """One decoder for both modalities, plus a learned output offset per modality: the teacher's modality gap
    (image and text embeddings sit in different cones) lives in the offsets, so the shared map itself keeps
    image–text geometry consistent between the student's space and the teacher's."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: Optional[int] = None, modalities: int = 2):
        super().__init__()
        self.body = make_decoder(input_dim, output_dim, hidden_dim)
        self.offsets = nn.Parameter(torch.zeros(modalities, output_dim))

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        return self.body(x) + self.offsets[modality]


class IsometricDecoder(nn.Module):
    """Û = Q·Ŵ/√d with Q semi-orthogonal (orthonormal columns, or rows when the student is wider), shared by
    both modalities. Q preserves angles, so image–text similarities in the student's own space W are exactly
    those in Û: what the feature terms teach in Û is what the exported student keeps. The scale is fixed,
    not learned: a unit-RMS Ŵ maps to a unit-length Û (the targets' length), and the feature terms can only
    fall by aligning directions (a learned scale collapses to 0 early on, when Ŵ and the targets are still
    unrelated, and the student then never hears from the teacher: measured, see docs/studies/clip-cifd.md).

    Q is torch's orthogonal parametrization (`map.weight`; its state is what checkpoints hold), computed by
    `orthogonal_weight`: the same function, but cheaper when one side is much narrower than the other (see
    there), and computed once for the image call and the text call that follows it. The map from the
    generator to Q is the Cayley map by default (a linear solve; the matrix exponential costs several times
    as much per step, for students as good: docs/studies/clip-cifd.md). Which map a decoder uses is part of
    its state."""

    def __init__(self, input_dim: int, output_dim: int, orthogonal_map: str = "cayley"):
        super().__init__()
        from torch.nn.utils.parametrizations import orthogonal

        if orthogonal_map not in ORTHOGONAL_MAPS:
            raise UserError(f"the orthogonal map must be one of {', '.join(ORTHOGONAL_MAPS)}, got {orthogonal_map!r}")
        # householder (torch's default for non-square maps) collapses to 0 after one AdamW step here
        self.map = orthogonal(nn.Linear(input_dim, output_dim, bias=False), orthogonal_map=orthogonal_map)
        self.orthogonal_map = orthogonal_map
        self.scale = 1.0 / math.sqrt(input_dim)
        self._reuse: Optional[tuple] = None  # (key, Q) kept by a modality-0 call for the modality-1 call after it
        # checkpointed, so that a checkpoint is never read through the other map
        self.register_buffer("orthogonal_map_code", torch.tensor(ORTHOGONAL_MAPS.index(orthogonal_map)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        code = state_dict.get(prefix + "orthogonal_map_code")
        if code is None and prefix + "map.parametrizations.weight.original" in state_dict:
            # an isometric decoder from before the map was recorded: they all used the matrix exponential
            code = state_dict[prefix + "orthogonal_map_code"] = torch.tensor(ORTHOGONAL_MAPS.index("matrix_exp"))
        if code is None:  # no decoder of this kind in the checkpoint: the missing keys say so
            return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not 0 <= int(code) < len(ORTHOGONAL_MAPS):
            raise UserError(f"this checkpoint's isometric IBM decoder uses an orthogonal map this version does not "
                            f"know (code {int(code)})")
        saved = ORTHOGONAL_MAPS[int(code)]
        if saved != self.orthogonal_map:
            raise UserError(f"this checkpoint's isometric IBM decoder computes Q with the {saved} map and this run "
                            f"with the {self.orthogonal_map} one: pass --ibm-orthogonal-map {saved} to continue it")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight(self, modality: int = 0) -> torch.Tensor:
        """Q [output_dim, input_dim], equal to `self.map.weight` up to float rounding."""
        param = self.map.parametrizations.weight
        x, base = param.original, getattr(param[0], "base", None)
        key = (x.data_ptr(), x._version, None if base is None else (base.data_ptr(), base._version),
               torch.is_grad_enabled())
        reuse, self._reuse = self._reuse, None
        if modality != 0 and reuse is not None and reuse[0] == key:
            return reuse[1]
        q = orthogonal_weight(x, base, self.orthogonal_map)
        if modality == 0:
            # The text call right after this image call reads the same Q: one Q (and one backward
            # through it) per step instead of two. Reused once, and never after a backward went through it.
            self._reuse = (key, q)
            if q.requires_grad:
                q.register_hook(self._forget)
        return q

    def _forget(self, grad):
        self._reuse = None
        return grad

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reuse"] = None
        return state

    def forward(self, x: torch.Tensor, modality: int = 0) -> torch.Tensor:
        return self.scale * F.linear(x, self.weight(modality))


def orthogonal_weight(x: torch.Tensor, base: Optional[torch.Tensor], kind: str) -> torch.Tensor:
    """What torch's `orthogonal(..., orthogonal_map=kind)` computes from its `original` X [n', k'] and `base`
    (use_trivialization): with X tall [n, k] (transposed if wide), A = L̃ − L̃ᵀ for L̃ = [tril(X), 0] [n, n],
    Q = base · exp(A)[:, :k] ("matrix_exp") or base · [(I − A/2)⁻¹(I + A/2)][:, :k] ("cayley").

    A has rank ≤ 2k: A = U Vᵀ with U = [L, −E], V = [E, L] (L = tril(X), E = the first k columns of the
    identity), so exp(A) = I + U φ(VᵀU) Vᵀ with φ(z) = (eᶻ − 1)/z, and exp(A)[:, :k] = E + U φ(M) B with
    M = VᵀU [2k, 2k] and B = VᵀE = [I; L_topᵀ] [2k, k]. φ(M)·B is the top-right block of exp([[M, B], [0, 0]]),
    a 3k × 3k exponential: when 3k < n that replaces the n × n exponential (and its backward, a 2n × 2n one),
    e.g. 192 instead of 512 for a 64-wide student and 512-wide targets. Otherwise A's exponential is taken
    directly, as torch does.

    The Cayley map's columns, (I − A/2)⁻¹(I + A/2)E = 2(I − A/2)⁻¹E − E, are by Woodbury E + U (I − M/2)⁻¹ B: one
    2k × 2k solve instead of an n × n one when 2k < n (with L = tril(X, −1): the diagonal cancels in A)."""
    transposed = x.shape[-2] < x.shape[-1]
    if transposed:
        x = x.mT
    n, k = x.shape[-2], x.shape[-1]
    low = x.tril()
    if kind == "cayley" and 2 * k < n:
        low = low.tril(-1)  # the diagonal cancels in A; in U and V it would only worsen I − M/2's conditioning
        m, b = _low_rank_blocks(low, k)
        q = _identity_plus_u(low, torch.linalg.solve(torch.eye(2 * k, dtype=x.dtype, device=x.device) - 0.5 * m, b))
    elif kind == "cayley":
        a = _skew(low)
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        q = torch.linalg.solve(eye - 0.5 * a, (eye + 0.5 * a)[:, :k])
    elif 3 * k < n:
        # M's identity block gives it norm ≥ 1 however small X is, and the exponential's cost grows with the norm;
        # M' = D⁻¹MD with D = diag(I, εI), ε ≈ ‖L‖ (φ(M) = D φ(M') D⁻¹, any ε), and B scaled by ε, have norm ≈ ‖L‖.
        eps = low.detach().abs().sum(0).amax().clamp(1e-4, 1.0)
        m, b = _low_rank_blocks(low, k, eps)
        block = torch.cat([torch.cat([m, b], 1), x.new_zeros(k, 3 * k)], 0)  # [[M', εD⁻¹B], [0, 0]] [3k, 3k]
        r = matrix_exp(block)[:2 * k, 2 * k:]  # ε·φ(M')·D⁻¹B
        q = _identity_plus_u(low, torch.cat([r[:k] / eps, r[k:]], 0))  # φ(M)·B = D·r/ε [2k, k]
    else:
        q = matrix_exp(_skew(low))[:, :k]
    if base is not None:
        q = base @ q
    return q.mT if transposed else q


def _low_rank_blocks(low: torch.Tensor, k: int, eps=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """M' = D⁻¹MD [2k, 2k] and ε·D⁻¹B [2k, k] for D = diag(I, εI), M = VᵀU and B = VᵀE = [I; L_topᵀ] (see
    `orthogonal_weight`); ε = 1 gives M and B themselves."""
    top = low[:k]  # L_top [k, k]
    eye = torch.eye(k, dtype=low.dtype, device=low.device)
    m = torch.cat([torch.cat([top, -eps * eye], 1), torch.cat([low.mT @ low / eps, -top.mT], 1)], 0)
    return m, torch.cat([eps * eye, top.mT], 0)


def _identity_plus_u(low: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """E + U·C for U = [L, −E] [n, 2k] and C [2k, k]."""
    n, k = low.shape
    eye = torch.eye(k, dtype=low.dtype, device=low.device)
    q = torch.cat([low, -torch.cat([eye, low.new_zeros(n - k, k)], 0)], 1) @ coefficients
    return torch.cat([q[:k] + eye, q[k:]], 0)


def _skew(low: torch.Tensor) -> torch.Tensor:
    """A = L̃ − L̃ᵀ for L̃ = [L, 0] [n, n]."""
    n, k = low.shape
    square = torch.cat([low, low.new_zeros(n, n - k)], 1) if n != k else low
    return square - square.mT


class _MatrixExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return torch.matrix_exp(a)

    @staticmethod
    def backward(ctx, grad):
        # torch's backward: the top-right block of exp([[Aᵀ, G], [0, Aᵀ]]), whose cost grows with the block's norm,
        # here set by the gradient G (‖G‖₁ ≈ 20-30 against ‖A‖₁ < 3 in the CIFD step). That block is linear in G,
        # so G is scaled down to ‖A‖'s size and the result scaled back: fewer squarings, and no less accurate
        # (closer to a float64 reference than torch's own, see tests/test_ibm.py).
        (a,) = ctx.saved_tensors
        n = a.shape[-1]
        g_norm = grad.abs().sum(-2).amax(-1, keepdim=True).unsqueeze(-1)
        a_norm = a.abs().sum(-2).amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1e-3)
        scale = torch.where(g_norm > a_norm, g_norm / a_norm, torch.ones_like(g_norm))
        a_t = a.mT
        block = torch.cat([torch.cat([a_t, grad / scale], -1), torch.cat([torch.zeros_like(a), a_t], -1)], -2)
        return torch.matrix_exp(block)[..., :n, n:] * scale


def matrix_exp(a: torch.Tensor) -> torch.Tensor:
    """torch.matrix_exp, with a cheaper backward (`_MatrixExp`)."""
    return _MatrixExp.apply(a)


def scale_input(w: torch.Tensor, kind: str) -> torch.Tensor:
    """Z, what the IBM adds noise to: W itself ("raw") or W at unit RMS per dimension ("normalized")."""
    if kind == "raw":
        return w
    if kind == "normalized":
        return F.normalize(w, dim=-1) * math.sqrt(w.shape[-1])
    raise UserError(f"IBM input must be one of {', '.join(INPUTS)}, got {kind!r}")


class InformationBottleneck(nn.Module):
    def __init__(self, input_dim: int, *, input_kind: str = "normalized", noise: bool = True,
                 rate: bool = True):
        """`noise=False` and `rate=False` give the "no IBM" ablation: Z passes through unchanged."""
        super().__init__()
        if input_dim < 1:
            raise UserError("IBM widths must be positive integers")
        scale_input(torch.zeros(1, 1), input_kind)  # validates the kind
        self.input_dim, self.input_kind, self.noise = input_dim, input_kind, noise
        self.density = EntropyBottleneck(input_dim) if rate else None
        if self.density is not None:
            # The IBM never rounds or entropy-codes, so the bottleneck's quantiles (only used for that) are
            # frozen: a parameter without gradient would also break DDP without find_unused_parameters.
            self.density.quantiles.requires_grad_(False)

    def forward(self, w: torch.Tensor) -> dict:
        """{"noisy": Ŵ [B, input_dim], "rate": -log2 r(Ŵ) [B] in bits (absent without a rate term)}."""
        return run_bottlenecks([self], [w])[0]


def run_bottlenecks(ibms: Sequence[InformationBottleneck], ws: Sequence[torch.Tensor]) -> list[dict]:
    """Each IBM applied to its embedding, as `InformationBottleneck.forward` defines it, with the densities of all
    of them evaluated in one pass (`factorized_likelihoods`): CIFD runs an image and a text IBM every step."""
    zs, noisy = [], []
    for ibm, w in zip(ibms, ws):
        if w.dim() != 2 or w.shape[1] != ibm.input_dim:
            raise UserError(f"the IBM expects embeddings of shape [batch, {ibm.input_dim}], got {list(w.shape)}")
        z = scale_input(w.float(), ibm.input_kind)
        if ibm.noise and ibm.training:
            # drawn in the [C, B] layout EntropyBottleneck draws its noise in, so the values are the ones it adds
            z = z + torch.empty(z.shape[1], z.shape[0], dtype=z.dtype, device=z.device).uniform_(-0.5, 0.5).t()
        noisy.append(z)
    rated = [i for i, ibm in enumerate(ibms) if ibm.density is not None]
    likelihoods = factorized_likelihoods([ibms[i].density for i in rated], [noisy[i] for i in rated])
    out = [{"noisy": z} for z in noisy]
    for i, likelihood in zip(rated, likelihoods):
        out[i]["rate"] = -torch.log2(likelihood).sum(-1)
    return out


def _same_shape(densities: Sequence[EntropyBottleneck]) -> bool:
    first = densities[0]
    return all(d.filters == first.filters and d.use_likelihood_bound == first.use_likelihood_bound
               and (not d.use_likelihood_bound or d.likelihood_lower_bound.bound.equal(first.likelihood_lower_bound.bound))
               for d in densities[1:])


def factorized_likelihoods(densities: Sequence[EntropyBottleneck], values: Sequence[torch.Tensor]) -> list:
    """r(v) for each density at its values [B, C_i], lower-bounded as `EntropyBottleneck.forward` does: CompressAI's
    `_likelihood` (the learned cumulative c, r(v) = c(v + 1/2) - c(v - 1/2)) with its parameters, but computed
    once for all the densities and both half-bin ends (channels and ends stacked into one batch of small matrix
    products), which takes a quarter of the operations (forward and backward) of calling it per density. Densities
    of different shapes are evaluated one by one."""
    if not densities:
        return []
    if len(densities) > 1 and not _same_shape(densities):
        return [likelihood for d, v in zip(densities, values) for likelihood in factorized_likelihoods([d], [v])]
    first = densities[0]

    def stacked(name: str, i: int) -> torch.Tensor:
        parts = [getattr(d, name)[i] for d in densities]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    x = torch.cat([v.t() for v in values]).unsqueeze(1)  # [ΣC, 1, B], CompressAI's layout
    batch = x.shape[-1]
    logits = torch.cat([x - 0.5, x + 0.5], -1)
    for i in range(len(first.filters) + 1):
        logits = torch.matmul(F.softplus(stacked("matrices", i)), logits) + stacked("biases", i)
        if i < len(first.filters):
            logits = logits + torch.tanh(stacked("factors", i)) * torch.tanh(logits)
    lower, upper = logits.split(batch, -1)
    likelihood = torch.sigmoid(upper) - torch.sigmoid(lower)
    if first.use_likelihood_bound:
        likelihood = first.likelihood_lower_bound(likelihood)
    return list(likelihood.squeeze(1).t().split([v.shape[1] for v in values], dim=1))
