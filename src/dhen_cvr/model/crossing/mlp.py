"""``mlp``: a feed-forward network on the flattened token matrix (paper Table 4).

    h = MLP(flatten(X)),        flatten(X) in R^{N}, N = L * D
    Y = reshape(W_out h + b_out, L x D)

``B x L x D -> B x N -> B x hidden[-1] -> B x N -> B x L x D``. Table 4: "both MLPs have the
same output size 1024", i.e. ``hidden: [1024]`` (the default); the projection back to
``L x D`` is linear (no activation) so the DHEN shortcut and norm see an unconstrained sum.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from dhen_cvr.model.crossing.base import (
    Activation,
    CrossingContext,
    CrossingModule,
    CrossingParams,
    make_mlp,
)
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["MLPCrossing", "MLPParams"]


class MLPParams(CrossingParams):
    hidden: list[int] = Field(default_factory=lambda: [1024], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


@CROSSING_MODULES.register("mlp", params=MLPParams)
class MLPCrossing(CrossingModule):
    """Flatten, MLP with ``hidden`` layers, linear back to ``L x D``."""

    def __init__(self, params: MLPParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        self.net = make_mlp(
            ctx.flat_dim,
            params.hidden,
            ctx.flat_dim,
            activation=params.activation,
            dropout=params.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).unflatten(1, (self.ctx.num_tokens, self.ctx.dim))
