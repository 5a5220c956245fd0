"""Multi-task heads (paper 2.2 and 3.1 "Final MLP + Sigmoid"): one MLP and logit per task.

For head ``h`` and the flattened backbone output ``z = flatten(Y) in R^{L*D}``::

    a_1 = relu(W_{h,1} z + b_{h,1}),  a_i = relu(W_{h,i} a_{i-1} + b_{h,i}),
    logit_h = w_{h,out}^T a_n + b_{h,out}

Each head has its own weights (paper: hidden [128, 128, 128]). They are stored stacked so
all heads run as one matmul per layer: the first layer is one ``Linear(L*D -> H * h_1)``
(row block ``h`` is head ``h``'s ``W_{h,1}``), later layers are ``H x h_{i-1} x h_i``
batched matmuls. The sigmoid is applied by the loss / the exporter, not here.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiTaskHeads"]


class MultiTaskHeads(nn.Module):
    """``B x in_dim -> B x H`` logits, one independent MLP per head (in ``names`` order)."""

    def __init__(
        self, in_dim: int, names: list[str], hidden: list[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not names:
            raise ValueError("need at least one head")
        self.names = list(names)
        self.dropout = dropout
        H = len(names)
        widths = [in_dim, *hidden]
        self.first = nn.Linear(in_dim, H * widths[1]) if hidden else None
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(widths[1:]):
            self.weights.append(nn.Parameter(_uniform(H, fan_in, fan_out)))
            self.biases.append(nn.Parameter(_uniform(H, fan_in, fan_out, bias=True)))
        self.out_weight = nn.Parameter(_uniform(H, widths[-1], 1).squeeze(-1))  # H x h_n
        self.out_bias = nn.Parameter(torch.zeros(H))
        # Fitted intercepts added to the logits (train/recalibrate.py); 0 until fitted.
        self.register_buffer("offset", torch.zeros(H))

    offset: Tensor

    def shift_offsets(self, delta: Tensor) -> None:
        """Add ``delta`` (``H``) to the fitted logit offsets."""
        with torch.no_grad():
            self.offset.add_(delta.to(self.offset))

    def forward(self, z: Tensor) -> Tensor:
        if self.first is None:  # no hidden layers: one logit per head straight from z
            return F.linear(z, self.out_weight, self.out_bias + self.offset)
        H = len(self.names)
        a = F.relu(self.first(z)).unflatten(1, (H, -1)).transpose(0, 1)  # H x B x h_1
        a = F.dropout(a, self.dropout, self.training)
        for weight, bias in zip(self.weights, self.biases, strict=True):
            a = F.relu(torch.baddbmm(bias[:, None, :].to(a.dtype), a, weight.to(a.dtype)))
            a = F.dropout(a, self.dropout, self.training)
        logits = torch.einsum("hbk,hk->bh", a, self.out_weight.to(a.dtype))
        return logits + (self.out_bias + self.offset).to(logits.dtype)


def _uniform(H: int, fan_in: int, fan_out: int, *, bias: bool = False) -> Tensor:
    """``nn.Linear``'s default init (U(+-1/sqrt(fan_in))), stacked over heads."""
    bound = 1.0 / math.sqrt(fan_in)
    shape = (H, fan_out) if bias else (H, fan_in, fan_out)
    return torch.empty(shape).uniform_(-bound, bound)
