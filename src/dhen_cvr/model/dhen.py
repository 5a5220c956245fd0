"""The DHEN backbone: a stack of layers, each an ensemble of crossing modules.

One layer (DHEN paper arXiv 2203.11014 section 3; paper section 3.1, Figure 2)::

    Y = Norm(Dropout(Ensemble(m_1(X), ..., m_k(X))) + X),    X, Y in R^{B x L x D}

The shortcut is the identity (every module keeps the token count ``L``). Ensembles:

- ``sum`` (the paper's): ``sum_i m_i(X)``
- ``weighted_sum``: ``sum_i softmax(w)_i m_i(X)``, ``w in R^k`` learned, initialised equal
- ``concat``: ``[m_1(X); ...; m_k(X)]`` along the token axis (``B x kL x D``), then a learned
  linear map over the token axis back to ``L`` tokens: ``Y_l = sum_j P_{lj} Z_j + c_l``

Norm is LayerNorm (default) or RMSNorm over ``D`` per token, or none. The paper's deployed
model is two layers, ``[mlp, transformer]`` and ``[mlp, masknet]``, sum ensembles (Appendix A).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dhen_cvr.model.crossing import (
    CrossingContext,
    CrossingModuleConfig,
    build_crossing_module,
    count_flops,
)

__all__ = [
    "DHEN",
    "CrossingContext",
    "CrossingModuleConfig",
    "DHENConfig",
    "DHENLayer",
    "DHENLayerConfig",
    "Ensemble",
]

Ensemble = Literal["sum", "concat", "weighted_sum"]
Norm = Literal["layernorm", "rmsnorm", "none"]


class DHENLayerConfig(BaseModel):
    """One layer: its modules (at least one) and how their outputs are combined."""

    model_config = ConfigDict(extra="forbid")

    modules: list[CrossingModuleConfig] = Field(min_length=1)
    ensemble: Ensemble = "sum"


class DHENConfig(BaseModel):
    """The backbone: layers in order, the per-layer norm, dropout on each ensemble output."""

    model_config = ConfigDict(extra="forbid")

    layers: list[DHENLayerConfig] = Field(min_length=1)
    norm: Norm = "layernorm"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def _make_norm(norm: Norm, dim: int) -> nn.Module:
    if norm == "layernorm":
        return nn.LayerNorm(dim)
    if norm == "rmsnorm":
        return nn.RMSNorm(dim)
    return nn.Identity()


class DHENLayer(nn.Module):
    """``Y = Norm(Dropout(Ensemble(m_1(X), ..., m_k(X))) + X)``, ``B x L x D -> B x L x D``."""

    def __init__(
        self,
        config: DHENLayerConfig,
        ctx: CrossingContext,
        *,
        norm: Norm = "layernorm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.ensemble = config.ensemble
        self.module_names = [m.name for m in config.modules]
        self.crossings = nn.ModuleList(build_crossing_module(m, ctx) for m in config.modules)
        k, length = len(self.crossings), ctx.num_tokens
        self.ensemble_logits: nn.Parameter | None = None
        self.token_projection: nn.Linear | None = None
        if config.ensemble == "weighted_sum":
            self.ensemble_logits = nn.Parameter(torch.zeros(k))
        elif config.ensemble == "concat":
            self.token_projection = nn.Linear(k * length, length)
        self.dropout = nn.Dropout(dropout)
        self.norm = _make_norm(norm, ctx.dim)

    def combine(self, outputs: list[Tensor]) -> Tensor:
        """The ensemble of the modules' ``B x L x D`` outputs, ``-> B x L x D``."""
        if self.ensemble_logits is not None:
            weights = torch.softmax(self.ensemble_logits, dim=0)
            return torch.stack(outputs, dim=0).mul(weights[:, None, None, None]).sum(dim=0)
        if self.token_projection is not None:
            tokens = torch.cat(outputs, dim=1)  # B x kL x D
            return self.token_projection(tokens.transpose(1, 2)).transpose(1, 2)
        return torch.stack(outputs, dim=0).sum(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        mixed = self.combine([module(x) for module in self.crossings])
        return self.norm(self.dropout(mixed) + x)


class DHEN(nn.Module):
    """A stack of :class:`DHENLayer`, ``B x L x D -> B x L x D``."""

    def __init__(self, config: DHENConfig, ctx: CrossingContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.module_names = [[m.name for m in layer.modules] for layer in config.layers]
        self.layers = nn.ModuleList(
            DHENLayer(layer, ctx, norm=config.norm, dropout=config.dropout)
            for layer in config.layers
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def describe(self) -> list[list[str]]:
        """Module names per layer, e.g. ``[["mlp", "transformer"], ["mlp", "masknet"]]``."""
        return [list(names) for names in self.module_names]

    def flops_per_example(self) -> int:
        """Forward matmul FLOPs for one example (see :func:`count_flops`)."""
        return count_flops(self, self.ctx)
