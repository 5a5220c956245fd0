"""The moving average of the weights saved by ``train.ema_decay`` (beyond the paper).

A plain exponential moving average started from the first step keeps ``decay ** t`` of
that step's weights after ``t`` steps: with ``decay = 0.995`` and a 250-step run, 29% of
the saved model would be the barely trained first iterate. The average here is bias
corrected, as Adam corrects its moments (Kingma & Ba 2015, section 3):

    m_t = decay m_{t-1} + (1 - decay) x_t,  m_0 = 0,  average_t = m_t / (1 - decay ** t)

i.e. iterate ``i`` weighs ``(1 - decay) decay ** (t - i) / (1 - decay ** t)``: about the
uniform mean of the iterates while ``t << 1 / (1 - decay)``, the usual EMA after. Kept
as :class:`torch.optim.swa_utils.AveragedModel` state, so it checkpoints and resumes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["bias_corrected_ema", "weight_average"]

Tensors = tuple[torch.Tensor, ...] | list[torch.Tensor]
MultiAvgFn = Callable[[Tensors, Tensors, torch.Tensor | int], None]


def bias_corrected_ema(decay: float) -> MultiAvgFn:
    """An ``AveragedModel`` ``multi_avg_fn``: after the ``t``-th update the averages hold
    ``m_t / (1 - decay ** t)`` (module docstring), updated in place, one fused lerp."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1), got {decay}")

    def update(averages: Tensors, current: Tensors, num_averaged: torch.Tensor | int) -> None:
        t = int(num_averaged) + 1  # this update's index; AveragedModel copies at t = 1
        weight = (1.0 - decay) / (1.0 - decay**t)
        torch._foreach_lerp_(averages, current, weight)

    return update


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """The bias-corrected moving average of ``model``'s parameters (buffers: the model's)."""
    return AveragedModel(model, multi_avg_fn=bias_corrected_ema(decay))
