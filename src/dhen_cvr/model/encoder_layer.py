"""The one pre-norm Transformer encoder layer, shared by the ``transformer`` crossing
module (over feature tokens) and the sequence encoders (over behaviour items)::

    x = x + Drop(MHA(LN(x)))          MHA = softmax(Q K^T / sqrt(d_h)) V, via SDPA
    x = x + Drop(FFN(LN(x)))          FFN: width -> ffn -> width

``B x T x width -> B x T x width``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PreNormEncoderLayer"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class PreNormEncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN block (see the module docstring).

    ``forward(x, key_mask, causal)``: ``key_mask`` a ``B x 1 x 1 x T`` bool mask (True =
    may attend) or None; ``causal`` uses SDPA's ``is_causal`` with no mask tensor, so
    the fused kernels stay available (right-padded rows: a valid query only ever sees
    valid keys)."""

    def __init__(
        self,
        width: int,
        heads: int,
        ffn: int,
        dropout: float,
        activation: Literal["relu", "gelu"] = "relu",
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn),
            _ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(ffn, width),
        )
        self.residual_dropout = nn.Dropout(dropout)

    def attention(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """``B x T x width`` (already normalised) -> ``B x T x width``."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        dtype = q.dtype
        if dtype == torch.bfloat16 and q.device.type == "cpu":
            # CPU SDPA's bf16 backward is many times its fp32 time (benchmarks.bench_model):
            # attend in fp32 there (autocast off, or it casts back); projections stay bf16.
            with torch.autocast("cpu", enabled=False):
                out = self._sdpa(q.float(), k.float(), v.float(), key_mask, causal)
            out = out.to(dtype)
        else:
            out = self._sdpa(q, k, v, key_mask, causal)  # B x heads x T x d_h
        return self.attn_out(out.transpose(1, 2).flatten(2))

    def _sdpa(
        self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool
    ) -> Tensor:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and key_mask is None,
        )

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.residual_dropout(self.attention(self.attn_norm(x), key_mask, causal))
        return x + self.residual_dropout(self.ffn(self.ffn_norm(x)))
