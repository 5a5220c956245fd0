"""What every crossing module shares: its context, its config entry, its base class.

A crossing module maps the token matrix ``X: B x L x D`` to ``B x L x D`` (DESIGN section 3,
DHEN paper arXiv 2203.11014 section 3). A module is one file that defines a pydantic params
model and a :class:`CrossingModule` subclass, and registers both::

    class MLPParams(CrossingParams):
        hidden: list[int] = [1024]

    @CROSSING_MODULES.register("mlp", params=MLPParams)
    class MLPCrossing(CrossingModule):
        def __init__(self, params: MLPParams, ctx: CrossingContext) -> None: ...
        def forward(self, x: Tensor) -> Tensor: ...

plus one import line in ``crossing/__init__.py``. Configs name a module with
``{name: mlp, hidden: [1024]}`` (:class:`CrossingModuleConfig`); :func:`build_crossing_module`
turns that into the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dhen_cvr.registry import CROSSING_MODULES

__all__ = [
    "Activation",
    "CrossingContext",
    "CrossingModule",
    "CrossingModuleConfig",
    "CrossingParams",
    "build_crossing_module",
    "count_flops",
    "make_activation",
    "make_mlp",
]

Activation = Literal["relu", "gelu", "silu"]


@dataclass(frozen=True)
class CrossingContext:
    """Shape of the backbone input a module is built for.

    num_tokens:      ``L``, tokens per example
    dim:             ``D``, token width (paper: 64)
    candidate_index: index in ``X`` of the candidate-ad token (target attention), or None
    """

    num_tokens: int
    dim: int
    candidate_index: int | None = None

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.dim < 1:
            raise ValueError(f"need num_tokens >= 1 and dim >= 1, got {self}")
        if self.candidate_index is not None and not 0 <= self.candidate_index < self.num_tokens:
            raise ValueError(
                f"candidate_index {self.candidate_index} is outside 0..{self.num_tokens - 1}"
            )

    @property
    def flat_dim(self) -> int:
        """``N = L * D``, the width of the flattened token matrix."""
        return self.num_tokens * self.dim


class CrossingParams(BaseModel):
    """Base of every module's hyper-parameters (validated, unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CrossingModule(nn.Module):
    """Base class: ``forward(x: B x L x D) -> B x L x D``; keeps the context."""

    def __init__(self, ctx: CrossingContext) -> None:
        super().__init__()
        self.ctx = ctx

    def flops_per_example(self) -> int:
        """Forward FLOPs for one example, see :func:`count_flops`."""
        return count_flops(self, self.ctx)


class CrossingModuleConfig(BaseModel):
    """One module of a DHEN layer: ``{name: <registered name>, <its params>...}``.

    The extra keys are validated against the params model the module registered, so a
    typo fails at config load with the module's name in the message.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    _params: BaseModel = PrivateAttr()

    @model_validator(mode="after")
    def _validate_params(self) -> CrossingModuleConfig:
        if self.name not in CROSSING_MODULES:
            raise ValueError(
                f"unknown crossing module {self.name!r}; known: {CROSSING_MODULES.names()}"
            )
        params_model = CROSSING_MODULES.get(self.name).params or CrossingParams
        try:
            self._params = params_model.model_validate(self.model_extra or {})
        except ValidationError as err:
            raise ValueError(f"invalid params for crossing module {self.name!r}: {err}") from None
        return self

    @property
    def params(self) -> BaseModel:
        """The validated params model of this module (defaults filled in)."""
        return self._params


def build_crossing_module(
    spec: dict[str, Any] | CrossingModuleConfig, ctx: CrossingContext
) -> CrossingModule:
    """Build the registered module named by ``spec`` for inputs of shape ``B x L x D``."""
    config = (
        spec
        if isinstance(spec, CrossingModuleConfig)
        else CrossingModuleConfig.model_validate(spec)
    )
    module: CrossingModule = CROSSING_MODULES.get(config.name).obj(config.params, ctx)
    return module


def count_flops(module: nn.Module, ctx: CrossingContext) -> int:
    """Forward FLOPs of ``module`` for one example ``1 x L x D``.

    Counted by running the module under :class:`torch.utils.flop_counter.FlopCounterMode`:
    2 x multiply-adds of matrix products (``mm``/``addmm``/``bmm``/attention); element-wise
    ops, norms, activations and bias adds are not counted. The module runs in eval mode
    (no dropout) on zeros; its training flag is restored afterwards.
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(1, ctx.num_tokens, ctx.dim, device=device, dtype=dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def make_activation(name: Activation) -> nn.Module:
    """``relu`` / ``gelu`` / ``silu`` as a module."""
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def make_mlp(
    in_dim: int,
    hidden: list[int],
    out_dim: int | None = None,
    *,
    activation: Activation = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """``Linear -> act -> dropout`` per hidden size, then a plain ``Linear(-> out_dim)``
    when ``out_dim`` is given. ``... x in_dim -> ... x (out_dim or hidden[-1])``."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), make_activation(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
