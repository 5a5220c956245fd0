"""Exponential moving average of the weights (Polyak averaging; beyond the paper).

With Adam on rare positives the last iterate wanders: checkpoints 40 steps apart differ by
+-30% in calibration and +-20% in how far their top decile sits above the oracle. The
average of the last ``~1 / (1 - decay)`` iterates is what gets saved, evaluated and served.
Checkpoints written during training hold the last iterate (and the average so far, so a
resumed run continues it); the one written at the end holds the average.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """``avg <- decay * avg + (1 - decay) * w`` per parameter after every step (the first
    update copies ``w``); buffers are not averaged (the model's own are kept)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.average = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters()]
        if self.steps == 0:
            torch._foreach_copy_(self.average, params)
        else:
            torch._foreach_lerp_(self.average, params, 1.0 - self.decay)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": [a.clone() for a in self.average]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        torch._foreach_copy_(
            self.average,
            [a.to(b.device) for a, b in zip(state["average"], self.average, strict=True)],
        )

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into ``model``."""
        for p, a in zip(model.parameters(), self.average, strict=True):
            p.copy_(a)
