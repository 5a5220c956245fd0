"""``dcn_v2``: DCN V2 low-rank cross network on the flattened tokens (arXiv 2008.13535).

With ``x_0 = flatten(X) in R^N`` (``N = L * D``), for ``l = 0 .. num_layers-1``::

    x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l,     U_l in R^{N x r}, V_l in R^{r x N}, b_l in R^N

``*`` is element-wise. ``B x L x D -> B x N -> B x N -> B x L x D`` (the cross layers keep the
width, so no projection back is needed). Rank ``r`` defaults to ``min(N // 4, 512)``; weights
are xavier-normal, biases zero (TorchRec ``LowRankCrossNet`` initialisation, DESIGN
section 10).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["DCNv2Crossing", "DCNv2Params", "LowRankCrossLayer"]

MAX_DEFAULT_RANK = 512


class DCNv2Params(CrossingParams):
    num_layers: int = Field(default=2, ge=1)
    rank: int | None = Field(default=None, ge=1, description="None: min(N // 4, 512)")


class LowRankCrossLayer(nn.Module):
    """One cross layer ``(x_0, x_l) -> x_0 * (U (V x_l) + b) + x_l``, both ``B x N``."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)  # V
        self.up = nn.Linear(rank, width)  # U, b
        nn.init.xavier_normal_(self.down.weight)
        nn.init.xavier_normal_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.up(self.down(x)) + x


@CROSSING_MODULES.register("dcn_v2", params=DCNv2Params)
class DCNv2Crossing(CrossingModule):
    """``num_layers`` low-rank cross layers on ``flatten(X)``."""

    def __init__(self, params: DCNv2Params, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        width = ctx.flat_dim
        rank = params.rank or max(1, min(width // 4, MAX_DEFAULT_RANK))
        self.cross_layers = nn.ModuleList(
            LowRankCrossLayer(width, rank) for _ in range(params.num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        x0 = x.flatten(1)
        out = x0
        for layer in self.cross_layers:
            out = layer(x0, out)
        return out.unflatten(1, (self.ctx.num_tokens, self.ctx.dim))
