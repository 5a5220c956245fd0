"""``transformer``: a Transformer encoder over the ``L`` feature tokens (paper Table 4).

    H_0 = X W_in + E                         W_in: D -> width, E in R^{L x width} learned
    H_j = H_{j-1} + MHA(LN(H_{j-1}))          (pre-norm; MHA = softmax(Q K^T / sqrt(d_h)) V)
    H_j = H_j + FFN(LN(H_j))                  FFN: width -> ffn -> width, ReLU
    Y   = LN(H_layers) W_out                  W_out: width -> D

``B x L x D -> B x L x width -> B x L x D``. No attention mask (every token is a real
feature). ``E`` is a per-token embedding: token ``i`` always holds the same feature, and
attention alone is permutation-equivariant. The layer is
:class:`~dhen_cvr.model.encoder_layer.PreNormEncoderLayer` (SDPA attention). Table 4: 2 layers, 4 heads,
hidden 256, FFN 512, dropout 0 (the defaults here).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from dhen_cvr.model.crossing.base import CrossingContext, CrossingModule, CrossingParams
from dhen_cvr.model.encoder_layer import PreNormEncoderLayer
from dhen_cvr.registry import CROSSING_MODULES

__all__ = ["TransformerCrossing", "TransformerParams"]


class TransformerParams(CrossingParams):
    width: int = Field(default=256, ge=1)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    ffn: int = Field(default=512, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    token_embedding: bool = True

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerParams:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


@CROSSING_MODULES.register("transformer", params=TransformerParams)
class TransformerCrossing(CrossingModule):
    """Project to ``width``, ``layers`` pre-norm encoder layers, final LN, project to ``D``."""

    def __init__(self, params: TransformerParams, ctx: CrossingContext) -> None:
        super().__init__(ctx)
        self.project_in = nn.Linear(ctx.dim, params.width)
        self.token_embedding = (
            nn.Parameter(torch.randn(ctx.num_tokens, params.width) * 0.02)
            if params.token_embedding
            else None
        )
        self.layers = nn.ModuleList(
            PreNormEncoderLayer(params.width, params.heads, params.ffn, params.dropout)
            for _ in range(params.layers)
        )
        self.final_norm = nn.LayerNorm(params.width)
        self.project_out = nn.Linear(params.width, ctx.dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.project_in(x)
        if self.token_embedding is not None:
            h = h + self.token_embedding
        for layer in self.layers:
            h = layer(h)
        return self.project_out(self.final_norm(h))
