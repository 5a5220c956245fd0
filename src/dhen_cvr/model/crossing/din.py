"""``din``: target attention of the tokens against the candidate ad (DIN, arXiv 1706.06978).

With tokens ``t_1..t_L`` and the candidate ``c`` (token ``ctx.candidate_index``, or a learned
query vector when the context has no candidate token)::

    s_i = MLP([t_i, c, t_i - c, t_i * c])      (score "mlp", DIN's activation unit)
    s_i = t_i . c / sqrt(D)                     (score "dot")
    w   = softmax_i(s)
    y_i = L * w_i * t_i

So the output stays ``B x L x D``: every token re-weighted by its relevance to the
candidate, scaled by ``L`` so that uniform attention is the identity. (DIN pools
``sum_i w_i t_i``; here the pooling is left to the following layers, and DIN's unnormalised
weights are replaced by a softmax so the scale does not drift with ``L``.)
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import (
    Activation,
    CrossingContext,
    CrossingModule,
    CrossingParams,
    make_mlp,
)
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["DINCrossing", "DINParams"]


class DINParams(CrossingParams):
    score: Literal["mlp", "dot"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64], min_length=1)
    activation: Activation = "relu"


@CROSSING_MODULES.register("din", params=DINParams)
class DINCrossing(CrossingModule):
    """Softmax attention weights of tokens w.r.t. the candidate, applied per token."""

    def __init__(self, params: DINParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        self.query = (
            nn.Parameter(torch.randn(ctx.dim) * ctx.dim**-0.5)
            if ctx.candidate_index is None
            else None
        )
        # No bias on the score: a constant shift of every s_i is a no-op under the softmax.
        self.scorer = (
            nn.Sequential(
                make_mlp(4 * ctx.dim, params.hidden, activation=params.activation),
                nn.Linear(params.hidden[-1], 1, bias=False),
            )
            if params.score == "mlp"
            else None
        )

    def scores(self, x: Tensor) -> Tensor:
        """Attention logits ``B x L`` of each token against the candidate."""
        index = self.ctx.candidate_index
        if index is None:
            assert self.query is not None
            candidate = self.query.expand(x.shape[0], 1, -1)
        else:
            candidate = x.narrow(1, index, 1)  # B x 1 x D
        if self.scorer is None:
            return (x @ candidate.transpose(1, 2)).squeeze(-1) * self.ctx.dim**-0.5
        candidate = candidate.expand_as(x)
        features = torch.cat([x, candidate, x - candidate, x * candidate], dim=-1)
        return self.scorer(features).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.scores(x)  # softmax in at least float32 (bfloat16 under autocast)
        weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), -1)
        return x * (weights.to(x.dtype) * self.ctx.num_tokens)[..., None]
