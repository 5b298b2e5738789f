"""Rate-Distortion Modules (RDMs): small autoencoders that squeeze a frozen teacher's embedding through a
rate-constrained bottleneck, so that one teacher yields "weaker teachers" at several rates (the paper).

    Y = enc(X);  Ŷ = round(Y) when teaching / evaluating;  X̂ = dec(Ŷ)
    while training: the rate reads Y + U(-0.5, 0.5); the decoder reads round(Y) with a straight-through
    gradient (config `train_quantization="ste"`, the default) or the noisy Y + U ("noise")
    L_R = mean_b[ R · D(X, X̂) + rate(Ŷ) ]      rate(Ŷ) = -log2 q(Ŷ) in bits per sample

`q` is the factorised density of Ballé et al. as implemented by CompressAI's `EntropyBottleneck`, whose
auxiliary quantile loss is part of `RateDistortionModule.loss`. Units and normalisation: the rate is in
**bits per sample** (summed over bottleneck channels); the distortion D is **summed over embedding
dimensions** and averaged over the batch (‖X − X̂‖² for "mse"), so R is "bits per unit of squared error".

The "rate measured with rounding" (`rate` in eval mode / from `teach`) is -log2 of the bottleneck's
likelihood of the rounded values, i.e. the ideal code length under q. We do not run CompressAI's range
coder (that would need `EntropyBottleneck.update()` and adds at most a few bytes of overhead per sample).

The module knows nothing about CLIP: the classification variant adds a linear head on X̂ and the
CE + λ_KL·KL(v̂_T ‖ v̂_RDM) terms of the paper.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..entropy import EntropyBottleneck
from ..file_io import check_format, read_torch_file, write_atomic
from ..errors import UserError
from .rdm_config import ACTIVATION_NAMES, DISTORTIONS, RateDistortionConfig

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)
FAMILY_FORMAT = "cifd_clip.rdm_family"
FAMILY_VERSION = 1


def _mlp(dims: list[int], activation_after: set[int], first_index: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if first_index + i in activation_after:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def distortion_per_sample(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "mse",
                          reduction: str = "sum") -> torch.Tensor:
    """D(x, x̂) per sample: ‖x − x̂‖² ("mse") or smooth-L1 (β = 1), summed ("sum") or averaged ("mean") over
    the last dimension. The one feature distance of the project (RDMs, CIFD terms, CLIP-KD's FD)."""
    if kind == "mse":
        per_element = (x - x_hat).pow(2)
    elif kind == "smooth_l1":
        per_element = F.smooth_l1_loss(x_hat, x, reduction="none", beta=1.0)
    else:
        raise UserError(f"distortion must be one of {list(DISTORTIONS)}, got {kind!r}")
    return per_element.sum(-1) if reduction == "sum" else per_element.mean(-1)


class RateDistortionModule(nn.Module):
    """MLP encoder → entropy bottleneck → MLP decoder (→ optional linear head)."""

    def __init__(self, config: RateDistortionConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        n_enc, n_dec = c.encoder_layers, c.decoder_layers
        if c.activation_after is None:
            act = set(range(1, n_enc)) | set(range(n_enc + 1, n_enc + n_dec))
        else:
            act = {int(i) for i in c.activation_after}
        enc_dims = [c.input_dim] + [c.hidden_dim] * (n_enc - 1) + [c.bottleneck_dim]
        dec_dims = [c.bottleneck_dim] + [c.hidden_dim] * (n_dec - 1) + [c.input_dim]
        self.encoder = _mlp(enc_dims, act, 1, c.activation)
        self.bottleneck = EntropyBottleneck(c.bottleneck_dim, init_scale=c.init_scale)
        self.decoder = _mlp(dec_dims, act, n_enc + 1, c.activation)
        self.head = nn.Linear(c.input_dim, c.num_classes) if c.num_classes > 0 else None

    @property
    def rate_weight(self) -> float:
        return self.config.rate_weight

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return F.normalize(x, dim=-1) if self.config.normalize_input else x

    def forward(self, x: torch.Tensor) -> dict:
        """Noise in train mode, rounding in eval mode. Returns reconstruction [B,D], likelihoods [B,C],
        rate [B] (bits), distortion [B] (against the prepared input), target [B,D] and logits if a head."""
        target = self.prepare_input(x)
        y = self.encoder(target)
        y_hat, likelihoods = self.bottleneck(y)
        if self.training and self.config.train_quantization == "ste":
            # The decoder sees the rounded Ŷ it will see when teaching (straight-through gradient); the rate
            # keeps the noisy estimate. Mixed quantisation (Minnen & Singh 2020).
            medians = self.bottleneck._get_medians().detach().reshape(1, -1)
            rounded = self.bottleneck.quantize(y, "dequantize", medians)
            y_hat = y + (rounded - y).detach()
        x_hat = self.decoder(y_hat)
        out = {
            "reconstruction": x_hat,
            "likelihoods": likelihoods,
            "rate": -torch.log2(likelihoods).sum(-1),
            "distortion": distortion_per_sample(target, x_hat, self.config.distortion),
            "target": target,
        }
        if self.head is not None:
            out["logits"] = self.head(x_hat)
        return out

    def aux_loss(self) -> torch.Tensor:
        """CompressAI's quantile loss; only the bottleneck's `quantiles` receive its gradient."""
        return self.bottleneck.loss()

    def loss(self, out: dict, labels: Optional[torch.Tensor] = None,
             teacher_logits: Optional[torch.Tensor] = None) -> dict:
        """Named, already weighted terms of L_R (+ L'_R for classification); the trainer sums the values.

        rdm_distortion = R · w_rec · mean_b D(X, X̂);  rdm_rate = mean_b -log2 q(Ŷ);  rdm_aux = quantile loss;
        rdm_ce = CE(y, v̂_RDM);  rdm_kl = λ_KL · τ² · KL(softmax(v̂_T/τ) ‖ softmax(v̂_RDM/τ)).
        """
        c = self.config
        terms = {
            "rdm_distortion": c.rate_weight * c.reconstruction_weight * out["distortion"].mean(),
            "rdm_rate": out["rate"].mean(),
            "rdm_aux": c.aux_weight * self.aux_loss(),
        }
        if labels is not None or teacher_logits is not None:
            if "logits" not in out:
                raise UserError("this RDM has no classification head (num_classes = 0) but labels were given")
            logits = out["logits"]
            if labels is not None:
                terms["rdm_ce"] = F.cross_entropy(logits, labels)
            if teacher_logits is not None:
                tau = c.temperature
                kl = F.kl_div(F.log_softmax(logits / tau, -1), F.log_softmax(teacher_logits / tau, -1),
                              reduction="batchmean", log_target=True)
                terms["rdm_kl"] = c.kl_weight * tau * tau * kl
        return terms

    @torch.no_grad()
    def finalize(self) -> None:
        """After training: settle the bottleneck's tail quantiles exactly (bisection) and build its CDF tables,
        so that `bottleneck.compress` works. The medians stay the ones training rounded at: the decoder learned
        round(Y − m) + m for those m, and re-estimated medians move the rounding of a channel whose learned
        median lags its density, which raised one R = 300 RDM's held-out MSE 2.7-fold, above the R = 100
        RDM's (docs/studies/rdm-stall.md)."""
        medians = self.bottleneck.quantiles[:, 0, 1].clone()
        self.bottleneck._update_quantiles()
        quantiles = self.bottleneck.quantiles
        quantiles[:, 0, 1] = medians
        # a tail that bisection put on the wrong side of the kept median would leave no room for it
        quantiles[:, 0, 0] = torch.minimum(quantiles[:, 0, 0], medians)
        quantiles[:, 0, 2] = torch.maximum(quantiles[:, 0, 2], medians)
        self.bottleneck.update(force=True)

    @torch.no_grad()
    def teach(self, x: torch.Tensor, noise: Optional[torch.Generator] = None) -> torch.Tensor:
        """X̂ with rounding (eval mode, no grad), whatever mode the module is in; the mode is restored. With a
        `noise` generator, the code is Y + U(-½, ½) drawn from it instead of the rounded Ŷ (stochastic teaching)."""
        if noise is not None:
            y = self.encoder(self.prepare_input(x))
            return self.decoder(y + _uniform_noise(y, noise))
        was_training = self.training
        self.eval()
        try:
            return self(x)["reconstruction"]
        finally:
            self.train(was_training)


def _uniform_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U(-½, ½) shaped like `like`, drawn on the CPU from `generator` (the same draw on every device)."""
    return (torch.rand(like.shape, generator=generator) - 0.5).to(like.device, like.dtype)


class RDMFamily(nn.Module):
    """Every RDM of a distillation run: one list per modality, ordered by increasing rate weight R."""

    def __init__(self, rdms: dict[str, list[RateDistortionModule]], meta: Optional[dict] = None):
        super().__init__()
        self.family = nn.ModuleDict({
            modality: nn.ModuleList(sorted(modules, key=lambda m: m.rate_weight))
            for modality, modules in rdms.items()
        })
        self.meta = dict(meta or {})

    @classmethod
    def build(cls, dims: dict[str, int], rates: list[float], meta: Optional[dict] = None,
              **config_overrides) -> "RDMFamily":
        """One RDM per (modality, rate), e.g. `build({"image": 768, "text": 768}, [1e3, 3e3, 1e4])`."""
        if not rates:
            raise UserError("give at least one rate R for the RDMs")
        if len(set(rates)) != len(rates):
            raise UserError(f"the rates must be distinct, got {list(rates)}")
        rdms = {
            modality: [RateDistortionModule(RateDistortionConfig(input_dim=int(dim), rate_weight=float(r),
                                                                 **config_overrides)) for r in rates]
            for modality, dim in dims.items()
        }
        return cls(rdms, meta)

    @property
    def modalities(self) -> list[str]:
        return list(self.family.keys())

    def rdms(self, modality: str) -> list[RateDistortionModule]:
        if modality not in self.family:
            raise UserError(f"the RDM family has no {modality!r} RDMs (it has: {', '.join(self.modalities)})")
        return list(self.family[modality])

    def rates(self, modality: str) -> list[float]:
        return [m.rate_weight for m in self.rdms(modality)]

    @torch.no_grad()
    def teach(self, modality: str, x: torch.Tensor, noise: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        """One rounded reconstruction per RDM of `modality`, ordered by rate (eval mode, no grad).

        When every RDM of the modality has the same layers (as `build` and train-rdm make them), all of them run
        at once: one matrix multiply per layer for the whole family (the first layer's weights concatenated, as
        every RDM reads the same input; the others as a batched multiply), and only the reconstruction is
        computed (no likelihoods, rate or distortion). Equal to `[m.teach(x) for m in rdms]` up to float
        rounding; see `teach_each`. With a `noise` generator each code is Y + U(-½, ½) instead of rounded."""
        rdms = self.rdms(modality)
        stacked = self._stacked_weights(modality, rdms)
        if stacked is None:
            return self.teach_each(modality, x, noise)
        return _teach_stacked(stacked, rdms[0].prepare_input(x), noise)

    def teach_each(self, modality: str, x: torch.Tensor, noise: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        """`teach`, one RDM after another (each RDM's own full forward pass)."""
        return [m.teach(x, noise) for m in self.rdms(modality)]

    def _stacked_weights(self, modality: str, rdms: list[RateDistortionModule]) -> Optional[dict]:
        """The family's weights stacked per layer, rebuilt when a weight changed (in place, or moved by .to());
        None when the RDMs differ in layout and cannot run as one."""
        params = [t for m in rdms for t in (*m.encoder.parameters(), *m.decoder.parameters(), m.bottleneck.quantiles)]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in params)
        cache = self.__dict__.setdefault("_stacked", {})
        hit = cache.get(modality)
        if hit is not None and hit[0] == key:
            return hit[1]
        stacked = _stack_family(rdms)
        cache[modality] = (key, stacked)
        return stacked

    def to_checkpoint(self) -> dict:
        """Plain dict of tensors, lists, strings and numbers (loadable with weights_only=True)."""
        return {
            "format": FAMILY_FORMAT,
            "version": FAMILY_VERSION,
            "meta": self.meta,
            "modalities": {
                modality: [{"config": m.config.to_dict(),
                            "state_dict": {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}}
                           for m in modules]
                for modality, modules in self.family.items()
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the whole family to ONE file, atomically."""
        return write_atomic(path, lambda tmp: torch.save(self.to_checkpoint(), tmp))

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str = "checkpoint") -> "RDMFamily":
        check_format(ckpt, source, "an RDM checkpoint written by `cifd-clip train-rdm`", FAMILY_FORMAT, FAMILY_VERSION,
                     version_key="version", exact=False, remedy="a newer cifd-clip wrote it, or another program")
        rdms = {}
        for modality, entries in ckpt["modalities"].items():
            modules = []
            for entry in entries:
                module = RateDistortionModule(RateDistortionConfig.from_dict(entry["config"]))
                _load_rdm_state(module, entry["state_dict"], source)
                modules.append(module)
            rdms[modality] = modules
        return cls(rdms, ckpt.get("meta"))

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> "RDMFamily":
        ckpt = read_torch_file(path, "RDM checkpoint", " (make it with cifd-clip train-rdm)")
        family = cls.from_checkpoint(ckpt, str(path))
        family.eval()
        return family


def _layer_plan(seq: nn.Sequential) -> Optional[list]:
    """[(Linear, activation module or None), ...] of an encoder/decoder, or None if it holds anything else."""
    plan: list = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            plan.append([layer, None])
        elif isinstance(layer, tuple(ACTIVATIONS.values())) and plan and plan[-1][1] is None:
            plan[-1][1] = layer
        else:
            return None
    return plan


def _same_activation(a: Optional[nn.Module], b: Optional[nn.Module]) -> bool:
    if a is None or b is None:
        return a is b
    return type(a) is type(b) and getattr(a, "approximate", None) == getattr(b, "approximate", None)


def _stack_family(rdms: list[RateDistortionModule]) -> Optional[dict]:
    """Per layer, the weights of every RDM as one tensor: the first encoder layer's [N·H, D] (every RDM reads
    the same input), the others [N, in, out] for `baddbmm`; None when the RDMs' layouts differ."""
    first = rdms[0]
    plans = [(_layer_plan(m.encoder), _layer_plan(m.decoder)) for m in rdms]
    if any(enc is None or dec is None for enc, dec in plans):
        return None
    ref_enc, ref_dec = plans[0]
    for m, (enc, dec) in zip(rdms, plans):
        if m.config.normalize_input != first.config.normalize_input or len(enc) != len(ref_enc) or \
                len(dec) != len(ref_dec):
            return None
        for (lin, act), (ref_lin, ref_act) in zip(enc + dec, ref_enc + ref_dec):
            if lin.weight.shape != ref_lin.weight.shape or (lin.bias is None) != (ref_lin.bias is None) or \
                    not _same_activation(act, ref_act) or lin.weight.dtype != ref_lin.weight.dtype or \
                    lin.weight.device != ref_lin.weight.device:
                return None
    layers = []
    for index in range(len(ref_enc) + len(ref_dec)):
        linears = [(enc + dec)[index][0] for enc, dec in plans]
        act = (ref_enc + ref_dec)[index][1]
        if index == 0:
            weight = torch.cat([lin.weight.detach() for lin in linears]).t().contiguous()  # [D, N·H]
            bias = torch.cat([lin.bias.detach() for lin in linears]) if linears[0].bias is not None else None
        else:
            weight = torch.stack([lin.weight.detach().t() for lin in linears]).contiguous()  # [N, in, out]
            bias = torch.stack([lin.bias.detach() for lin in linears]).unsqueeze(1) if linears[0].bias is not None \
                else None
        layers.append((weight, bias, act))
    # CompressAI's eval-mode quantisation: round(y - median) + median, per channel
    medians = torch.stack([m.bottleneck._get_medians().detach().reshape(1, -1) for m in rdms])  # [N, 1, C]
    return {"layers": layers, "encoder_layers": len(ref_enc), "medians": medians, "count": len(rdms)}


def _teach_stacked(stacked: dict, x: torch.Tensor, noise: Optional[torch.Generator] = None) -> list[torch.Tensor]:
    n = stacked["count"]
    h = x
    for index, (weight, bias, act) in enumerate(stacked["layers"]):
        if index == 0:
            h = torch.addmm(bias, h, weight) if bias is not None else h @ weight  # [B, N·H]
            h = h.view(h.shape[0], n, -1).transpose(0, 1)  # [N, B, H]
        else:
            h = torch.baddbmm(bias, h, weight) if bias is not None else torch.bmm(h, weight)
        if act is not None:
            h = act(h)
        if index == stacked["encoder_layers"] - 1:
            if noise is not None:
                h = h + _uniform_noise(h, noise)
            else:
                medians = stacked["medians"]
                h = torch.round(h - medians) + medians
    return list(h.unbind(0))


def _load_rdm_state(module: RateDistortionModule, state_dict: dict, source: str) -> None:
    # EntropyBottleneck.update() fills the CDF buffers with data-dependent sizes; resize ours to match.
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        key = f"bottleneck.{name}"
        if key in state_dict:
            getattr(module.bottleneck, name).resize_(state_dict[key].shape)
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{source} does not match its RDM config ({len(result.missing_keys)} missing, "
                        f"{len(result.unexpected_keys)} unexpected weights)")
