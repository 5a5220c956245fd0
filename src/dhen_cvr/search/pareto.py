"""Pareto efficiency and the 2-D hypervolume, both objectives maximised (paper 3.3 step 6).

A point is Pareto-efficient when no other point is at least as good on both objectives
and better on one. The hypervolume of a set is the area it dominates above a reference
point ``r``: the union of the rectangles ``[r_0, x_0] x [r_1, x_1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["hypervolume", "normalise", "pareto_front"]


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Indices of the Pareto-efficient rows of ``points`` (``N x 2``), by descending first
    objective; of exact duplicates only the first is kept."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    order = sorted(range(len(p)), key=lambda i: (-p[i, 0], -p[i, 1], i))
    front: list[int] = []
    best_second = -np.inf
    for i in order:
        if not np.all(np.isfinite(p[i])):
            continue
        if p[i, 1] > best_second:
            front.append(i)
            best_second = p[i, 1]
    return front


def hypervolume(
    points: Sequence[Sequence[float]] | np.ndarray, reference: Sequence[float]
) -> float:
    """Area dominated by ``points`` (``N x 2``, maximised) above ``reference``; points not
    strictly better than the reference on both objectives add nothing."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    r0, r1 = float(reference[0]), float(reference[1])
    p = p[np.all(np.isfinite(p), axis=1) & (p[:, 0] > r0) & (p[:, 1] > r1)]
    area, top = 0.0, r1
    # sweep from the largest first objective down: each front point adds a strip
    for i in pareto_front(p):
        x, y = p[i]
        if y > top:
            area += (x - r0) * (y - top)
            top = y
    return area


def normalise(
    points: Sequence[Sequence[float]] | np.ndarray,
    reference: Sequence[float],
    scale: Sequence[float],
) -> np.ndarray:
    """``(p - reference) / (scale - reference)`` per objective: the reference maps to 0 and
    ``scale`` (e.g. the best seen on each axis) to 1."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    ref, top = np.asarray(reference, dtype=float), np.asarray(scale, dtype=float)
    return (p - ref) / np.where(top > ref, top - ref, 1.0)
