"""``senet``: squeeze-and-excitation over tokens (FiBiNET, arXiv 1905.09433, section 3.3).

    z = mean_D(X)                             B x L        (squeeze)
    a = gate(W_2 ReLU(W_1 z + b_1) + b_2)     B x L        W_1: L -> max(1, L // r), W_2: -> L
    Y = X * a[..., None]                      B x L x D    (re-weight)

``gate`` is ``sigmoid`` (default; SENet) or ``relu`` (FiBiNET's choice). FiBiNET uses
reduction ratio ``r = 3`` (the default).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["SENetCrossing", "SENetParams"]


class SENetParams(CrossingParams):
    reduction_ratio: int = Field(default=3, ge=1)
    gate: Literal["sigmoid", "relu"] = "sigmoid"


@CROSSING_MODULES.register("senet", params=SENetParams)
class SENetCrossing(CrossingModule):
    """Token-wise gates from the per-token mean, applied to the tokens."""

    def __init__(self, params: SENetParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        squeezed = max(1, ctx.num_tokens // params.reduction_ratio)
        self.excite = nn.Sequential(
            nn.Linear(ctx.num_tokens, squeezed), nn.ReLU(), nn.Linear(squeezed, ctx.num_tokens)
        )
        self.gate = torch.sigmoid if params.gate == "sigmoid" else torch.relu

    def forward(self, x: Tensor) -> Tensor:
        weights = self.gate(self.excite(x.mean(dim=2)))
        return x * weights[..., None]
