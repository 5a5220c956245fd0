"""Piecewise-linear encoding of scalars in [0, 1] (beyond the paper).

Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep Learning"
(arXiv 2203.05556), with ``T`` equal-width bins over [0, 1]: each value becomes a
"thermometer" of bin fill levels, so the linear layer after it is a learned piecewise-
linear function per feature (a threshold, a saturation: what a tree split expresses)::

    e[b, f, t] = clip(T * x[b, f] - t, 0, 1),   t = 0 .. T-1       (B x F -> B x F*T)

``x = sum_t e[t] / T`` exactly, so a linear layer on the encoding can still read the raw
value; ``T = 1`` is ``clip(x, 0, 1)`` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PiecewiseLinearEncoding"]


class PiecewiseLinearEncoding(nn.Module):
    """``B x F`` values in [0, 1] -> ``B x (F * num_bins)`` bin fill levels (see module)."""

    offsets: Tensor

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = num_bins
        self.register_buffer("offsets", torch.arange(num_bins).float(), persistent=False)

    def output_width(self, num_features: int) -> int:
        return num_features * self.num_bins

    def forward(self, x: Tensor) -> Tensor:
        filled = x[..., None] * self.num_bins - self.offsets.to(x.dtype)
        return filled.clamp(0.0, 1.0).flatten(-2)
