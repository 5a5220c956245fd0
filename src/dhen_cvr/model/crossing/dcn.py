"""``dcn``: DCN (v1) cross network on the flattened tokens (arXiv 1708.05123, eq. 3).

With ``x_0 = flatten(X) in R^N`` (``N = L * D``), for ``l = 0 .. num_layers-1``::

    x_{l+1} = x_0 * (x_l^T w_l) + b_l + x_l,      w_l, b_l in R^N

``x_l^T w_l`` is one scalar per example, so each layer has only ``2N`` parameters.
``B x L x D -> B x N -> B x N -> B x L x D``. ``w_l`` is xavier-normal (as an ``N x 1``
matrix), ``b_l`` zero.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["DCNCrossing", "DCNParams"]


class DCNParams(CrossingParams):
    num_layers: int = Field(default=2, ge=1)


@CROSSING_MODULES.register("dcn", params=DCNParams)
class DCNCrossing(CrossingModule):
    """``num_layers`` rank-one cross layers on ``flatten(X)``; weights ``W: num_layers x N``."""

    def __init__(self, params: DCNParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        width = ctx.flat_dim
        self.weight = nn.Parameter(torch.empty(params.num_layers, width))
        self.bias = nn.Parameter(torch.zeros(params.num_layers, width))
        for w in self.weight:
            nn.init.xavier_normal_(w.data.view(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        x0 = x.flatten(1)
        out = x0
        for layer in range(self.weight.shape[0]):
            projected = out @ self.weight[layer, :, None]  # B x 1, x_l^T w_l
            out = x0 * projected + self.bias[layer] + out
        return out.unflatten(1, (self.ctx.num_tokens, self.ctx.dim))
