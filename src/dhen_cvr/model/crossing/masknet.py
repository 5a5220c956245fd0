"""``masknet``: MaskNet's instance-guided mask blocks (arXiv 2102.07619, section 3).

Inputs: ``V_emb = flatten(X) in R^N`` (``N = L * D``) and the field-wise LayerNorm'd
embeddings ``V_ln = flatten(LN_D(X))`` (one LayerNorm over ``D``, shared by the tokens,
paper eq. 8). A :class:`MaskBlock` with hidden input ``V_hid in R^{d_in}`` computes::

    mask = W_2 ReLU(W_1 V_emb + b_1) + b_2          (eq. 5)   W_1: N -> t, W_2: t -> d_in
    out  = Dropout(ReLU(LN(W_h (mask * V_hid))))    (eq. 10)  W_h: d_in -> h, no bias

Layouts (paper Figure 3/4): ``serial`` chains blocks (block 1 reads ``V_ln``, block j reads
block j-1's output) and keeps the last output (``h``); ``parallel`` ("horizontal", Table 4)
runs every block on ``V_ln`` and concatenates the outputs (``blocks * h``). A final linear maps
that back to ``N``: ``B x L x D -> B x N -> B x (h | blocks*h) -> B x N -> B x L x D``.
Table 4: 2 horizontal blocks, hidden 256, dropout 0.005 (the defaults here). ``r`` is the
paper's reduction ratio ``t = round(r * d_in)`` (aggregation over projection width); in the parallel
layout ``d_in = N``, so each block's mask MLP has about ``2 r N^2`` weights, most of the module.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["MaskBlock", "MaskNetCrossing", "MaskNetParams"]


class MaskNetParams(CrossingParams):
    blocks: int = Field(default=2, ge=1)
    hidden: int = Field(default=256, ge=1)
    reduction_ratio: float = Field(
        default=1.0, gt=0.0, description="mask MLP width over the masked width (t / z)"
    )
    dropout: float = Field(default=0.005, ge=0.0, lt=1.0)
    layout: Literal["parallel", "serial"] = "parallel"


class MaskBlock(nn.Module):
    """``(V_emb: B x N_emb, V_hid: B x d_in) -> B x out_dim``, paper eq. 5 and 10."""

    def __init__(
        self, emb_dim: int, in_dim: int, out_dim: int, aggregation_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            nn.Linear(emb_dim, aggregation_dim), nn.ReLU(), nn.Linear(aggregation_dim, in_dim)
        )
        self.hidden = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, emb: Tensor, hidden: Tensor) -> Tensor:
        return self.dropout(torch.relu(self.norm(self.hidden(self.mask(emb) * hidden))))


@CROSSING_MODULES.register("masknet", params=MaskNetParams)
class MaskNetCrossing(CrossingModule):
    """``blocks`` MaskBlocks in a serial or parallel layout, projected back to ``L x D``."""

    def __init__(self, params: MaskNetParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        n = ctx.flat_dim
        self.serial = params.layout == "serial"
        self.field_norm = nn.LayerNorm(ctx.dim)
        in_dims = [n] + [params.hidden if self.serial else n] * (params.blocks - 1)
        self.blocks = nn.ModuleList(
            MaskBlock(
                n, d_in, params.hidden, max(1, round(d_in * params.reduction_ratio)), params.dropout
            )
            for d_in in in_dims
        )
        out_width = params.hidden if self.serial else params.blocks * params.hidden
        self.project = nn.Linear(out_width, n)

    def forward(self, x: Tensor) -> Tensor:
        emb = x.flatten(1)
        normed = self.field_norm(x).flatten(1)
        if self.serial:
            out = normed
            for block in self.blocks:
                out = block(emb, out)
        else:
            out = torch.cat([block(emb, normed) for block in self.blocks], dim=1)
        return self.project(out).unflatten(1, (self.ctx.num_tokens, self.ctx.dim))
