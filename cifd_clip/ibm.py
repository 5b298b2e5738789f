"""Information Bottleneck Module (IBM): a training-only, noisy, rate-penalised layer on the student's
embedding that regularises it against overfitting to many RDM targets (METHOD.md).

    Ŵ = W + U(-0.5, 0.5) in train mode, Ŵ = W in eval mode;   Û = dec(Ŵ);   rate = -log2 r(Ŵ) (bits/sample)

`r` is a factorised (Ballé) density, CompressAI's `EntropyBottleneck`. The decoder (1 or 2 linear layers)
maps the student width to the target (teacher) width, so it doubles as the projection the student needs
anyway when the widths differ.

The IBM exists only while distilling: it is checkpointed with the student (inside the module DDP wraps)
but dropped at inference and export — the student's embedding W is used as is.
"""
from __future__ import annotations

from typing import Optional

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn

from .errors import UserError


class InformationBottleneck(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, hidden_dim: Optional[int] = None):
        """`hidden_dim=None`: decoder is one linear layer; otherwise Linear → GELU → Linear."""
        super().__init__()
        if input_dim < 1 or output_dim < 1 or (hidden_dim is not None and hidden_dim < 1):
            raise UserError("IBM widths must be positive integers")
        self.input_dim, self.output_dim, self.hidden_dim = input_dim, output_dim, hidden_dim
        self.density = EntropyBottleneck(input_dim)
        # The IBM never rounds or entropy-codes, so the bottleneck's quantiles (only used for that) are
        # frozen: a parameter without gradient would also break DDP without find_unused_parameters.
        self.density.quantiles.requires_grad_(False)
        if hidden_dim is None:
            self.decoder = nn.Linear(input_dim, output_dim)
        else:
            self.decoder = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))

    def _likelihood(self, w_hat: torch.Tensor) -> torch.Tensor:
        # r(Ŵ) at un-noised, un-rounded points (eval mode); same computation as EntropyBottleneck.forward.
        values = w_hat.t().unsqueeze(1)  # [C, 1, B], the layout CompressAI works in
        likelihood, _, _ = self.density._likelihood(values)
        if self.density.use_likelihood_bound:
            likelihood = self.density.likelihood_lower_bound(likelihood)
        return likelihood.squeeze(1).t()

    def forward(self, w: torch.Tensor) -> dict:
        """{"output": Û [B, output_dim], "noisy": Ŵ [B, input_dim], "rate": -log2 r(Ŵ) [B] in bits}."""
        if w.dim() != 2 or w.shape[1] != self.input_dim:
            raise UserError(f"the IBM expects embeddings of shape [batch, {self.input_dim}], got {list(w.shape)}")
        w = w.float()
        if self.training:
            w_hat, likelihood = self.density(w, training=True)  # adds U(-0.5, 0.5)
        else:
            w_hat, likelihood = w, self._likelihood(w)
        return {"output": self.decoder(w_hat), "noisy": w_hat, "rate": -torch.log2(likelihood).sum(-1)}
