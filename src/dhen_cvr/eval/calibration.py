"""Undoing negative down-sampling (paper 5.1; DESIGN sections 2 and 10).

Training data keeps every converting impression and a fraction ``r`` of the rest, so a
model fitted on it predicts ``p_s = p / (p + (1 - p) r)``. The served probability maps it
back::

    p = p_s / (p_s + (1 - p_s) / r)  ==  sigmoid(logit(p_s) - log(1 / r))

Calibration is then measured on the full population by weighting each evaluation row by
``1 / π`` (``π``: the probability that the row survived down-sampling, 1 for kept-for-sure
rows and ``r`` for the rest): ``Σ w p / Σ w y`` with ``w = weight / π``. A calibrated
model scores about 1.0; above 1 over-predicts.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from torch import Tensor

__all__ = [
    "calibration",
    "correct_for_any_label_sampling",
    "correct_for_negative_sampling",
    "correct_logits_for_negative_sampling",
    "inclusion_weights",
]

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor, float)


def _check_rate(negative_rate: float) -> float:
    if not (0 < negative_rate <= 1):
        raise ValueError(f"negative_rate must be in (0, 1], got {negative_rate}")
    return float(negative_rate)


def correct_for_negative_sampling(p_sampled: ArrayT, negative_rate: float) -> ArrayT:
    """``p = p_s / (p_s + (1 - p_s) / r)`` for probabilities in ``[0, 1]`` (numpy, torch or
    float), computed as ``r p_s / (1 - (1 - r) p_s)``, whose denominator is ``>= r > 0``."""
    r = _check_rate(negative_rate)
    return r * p_sampled / (1 - (1 - r) * p_sampled)


def correct_for_any_label_sampling(
    p_sampled: ArrayT, any_sampled: ArrayT, negative_rate: float
) -> ArrayT:
    """``p_h = r p_s,h / (1 - (1 - r) a_s)``: the exact map when a row is kept for sure if
    *any* keep label is 1 and with probability ``r`` otherwise (DESIGN 10).

    ``p_sampled``: ``p_s,h`` on the sampled data (``... x H`` or ``...``); ``any_sampled``:
    ``a_s``, the sampled-data probability that any keep label is 1 (broadcast against
    ``p_sampled``, e.g. ``... x 1``). Derivation: ``P(kept | x) = a + r (1 - a)`` and
    ``a_s = a / P(kept | x)`` give ``P(kept | x) = r / (1 - (1 - r) a_s)``, and a row with
    ``y_h = 1`` is always kept, so ``p_h = p_s,h P(kept | x)``. With ``a_s = p_s,h`` (one
    keep label) it is :func:`correct_for_negative_sampling`. The result is in ``[0, 1]``
    for inputs in ``[0, 1]``, since the denominator is ``>= r``.
    """
    r = _check_rate(negative_rate)
    return r * p_sampled / (1 - (1 - r) * any_sampled)


def correct_logits_for_negative_sampling(logits: ArrayT, negative_rate: float) -> ArrayT:
    """The same correction on logits: ``logit - log(1 / r)``."""
    return logits + math.log(_check_rate(negative_rate))


def inclusion_weights(
    inclusion_prob: npt.ArrayLike, weight: npt.ArrayLike | None = None
) -> np.ndarray:
    """``weight / π`` per row (float64): the full-population weight of a sampled row."""
    pi = np.asarray(inclusion_prob, dtype=np.float64)
    if pi.size and not ((pi > 0) & (pi <= 1)).all():
        bad = int(np.flatnonzero(~((pi > 0) & (pi <= 1)))[0])
        raise ValueError(f"inclusion probabilities must be in (0, 1]; row {bad} has {pi[bad]}")
    w = np.ones_like(pi) if weight is None else np.asarray(weight, dtype=np.float64)
    return w / pi


def calibration(y: npt.ArrayLike, p: npt.ArrayLike, w: npt.ArrayLike | None = None) -> float:
    """``Σ w p / Σ w y``; NaN when there is no (weighted) positive."""
    y_, p_ = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    w_ = np.ones_like(y_) if w is None else np.asarray(w, dtype=np.float64)
    positives = float(np.dot(w_, y_))
    return float(np.dot(w_, p_)) / positives if positives > 0 else math.nan
