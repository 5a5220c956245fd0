"""``hstu``: one HSTU layer over the ``L`` tokens (arXiv 2402.17152, eq. 1-3).

    U, V, Q, K = split(SiLU(f_1(X)))                      f_1: D -> H (2 d_v + 2 d_qk)
    A = SiLU(Q K^T / sqrt(d_qk) + rab) / L                 per head, B x H x L x L
    Y = f_2(LN(A V) * U)                                    f_2: H d_v -> D

Pointwise aggregated attention: no softmax, the SiLU scores are averaged over the ``L``
keys. ``rab`` is a learned ``H x L x L`` bias (token ``i`` is always the same feature, so a
per-pair bias plays the role of HSTU's relative position bias; zero-initialised). No causal
mask: the tokens are a set of features, not a time series. HSTU's residual ``X + Y`` is left
to the DHEN shortcut. ``B x L x D -> B x L x D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["HSTUCrossing", "HSTUParams"]


class HSTUParams(CrossingParams):
    heads: int = Field(default=2, ge=1)
    qk_dim: int = Field(default=32, ge=1, description="per head")
    v_dim: int = Field(default=32, ge=1, description="per head")
    relative_bias: bool = True


@CROSSING_MODULES.register("hstu", params=HSTUParams)
class HSTUCrossing(CrossingModule):
    """SiLU-gated pointwise attention over tokens (one HSTU layer without its residual)."""

    def __init__(self, params: HSTUParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        self.heads, self.qk_dim, self.v_dim = params.heads, params.qk_dim, params.v_dim
        value_width = params.heads * params.v_dim
        self.f1 = nn.Linear(ctx.dim, 2 * value_width + 2 * params.heads * params.qk_dim)
        self.rab = (
            nn.Parameter(torch.zeros(params.heads, ctx.num_tokens, ctx.num_tokens))
            if params.relative_bias
            else None
        )
        self.norm = nn.LayerNorm(value_width)
        self.f2 = nn.Linear(value_width, ctx.dim)

    def forward(self, x: Tensor) -> Tensor:
        value_width, qk_width = self.heads * self.v_dim, self.heads * self.qk_dim
        u, v, q, k = F.silu(self.f1(x)).split(
            [value_width, value_width, qk_width, qk_width], dim=-1
        )
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) * self.qk_dim**-0.5  # B x H x L x L
        if self.rab is not None:
            logits = logits + self.rab
        attn = F.silu(logits) / self.ctx.num_tokens
        mixed = (attn @ v).transpose(1, 2).flatten(2)  # B x L x H d_v
        return self.f2(self.norm(mixed) * u)
