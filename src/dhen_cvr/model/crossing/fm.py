"""``fm``: DeepFM's pairwise (second-order) interaction, per token (arXiv 1703.04247).

The FM term of one example with token vectors ``v_1..v_L in R^D`` is the ``D``-vector::

    fm = sum_{i<j} v_i * v_j = 0.5 * ((sum_i v_i)^2 - sum_i v_i^2)

To keep ``B x L x D`` this module returns each token's share of the pairwise products::

    y_i = v_i * sum_{j != i} v_j = v_i * (s - v_i),      s = sum_j v_j

so ``sum_i y_i = 2 * fm`` (each pair counted once from each side). Cost ``O(L D)``, no
parameters. ``B x L x D -> B x L x D``.
"""

from __future__ import annotations

from torch import Tensor

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["FMCrossing", "FMParams"]


class FMParams(CrossingParams):
    """No hyper-parameters."""


@CROSSING_MODULES.register("fm", params=FMParams)
class FMCrossing(CrossingModule):
    """Per-token FM interaction ``y_i = v_i * (sum_j v_j - v_i)``."""

    def __init__(self, params: FMParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)

    def forward(self, x: Tensor) -> Tensor:
        return x * (x.sum(dim=1, keepdim=True) - x)
