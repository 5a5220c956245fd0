"""Vectorised "what happened before time t" look-ups over per-user event logs."""

from __future__ import annotations

import numpy as np

__all__ = ["KeyedTimeIndex"]


class KeyedTimeIndex:
    """Events grouped by ``(user, key)`` and sorted by time, queried at many times at once.

    Each event is one int64 code ``(user * n_keys + key) * span + t`` (``0 <= t < span``),
    so one ``np.searchsorted`` finds, for a batch of queries, how many events of the
    query's group happened before its time. ``key`` is e.g. a topic or an advertiser;
    use ``n_keys=1`` for per-user counts. All methods take equal-length query arrays.
    """

    def __init__(
        self,
        user: np.ndarray,
        key: np.ndarray | None,
        t: np.ndarray,
        *,
        n_keys: int,
        span: int,
        weight: np.ndarray | None = None,
    ) -> None:
        self.n_keys, self.span = n_keys, span
        key = np.zeros_like(user) if key is None else key
        code = self._code(user, key, t)
        order = np.argsort(code, kind="stable")
        self.order = order  # sorted position -> index into the arrays given
        self.code = code[order]
        self.t = t[order].astype(np.int64)
        self.weight = None if weight is None else weight[order].astype(np.float64)

    def _code(self, user: np.ndarray, key: np.ndarray | int, t: np.ndarray | int) -> np.ndarray:
        group = user.astype(np.int64) * self.n_keys + key
        return group * self.span + np.asarray(t, dtype=np.int64)

    def _before(self, user: np.ndarray, key: np.ndarray | int, t: np.ndarray | int) -> np.ndarray:
        """Index of the first event of the group at or after ``t``."""
        return np.searchsorted(self.code, self._code(user, key, t), side="left")

    def count(
        self, user: np.ndarray, key: np.ndarray | int, t_lo: np.ndarray, t_hi: np.ndarray
    ) -> np.ndarray:
        """Events of the group with ``t_lo <= t < t_hi`` (``t_lo`` clipped at 0)."""
        lo = self._before(user, key, np.maximum(t_lo, 0))
        return self._before(user, key, t_hi) - lo

    def decayed_sum(
        self,
        user: np.ndarray,
        key: np.ndarray | int,
        t: np.ndarray,
        tau: float,
        max_events: int = 32,
    ) -> np.ndarray:
        """``sum w * exp(-(t - t_e) / tau)`` over the group's last ``max_events`` before ``t``."""
        hi = self._before(user, key, t)
        start = self._before(user, key, 0)
        n = np.minimum(hi - start, max_events)
        row = np.repeat(np.arange(len(hi)), n)
        back = np.arange(len(row)) - np.repeat(np.cumsum(n) - n, n)  # 0 = newest
        pos = hi[row] - 1 - back
        w = np.exp(-(t[row] - self.t[pos]) / tau)
        if self.weight is not None:
            w = w * self.weight[pos]
        return np.bincount(row, weights=w, minlength=len(hi))

    def last_event(
        self, user: np.ndarray, key: np.ndarray | int, t: np.ndarray, t_lo: np.ndarray
    ) -> np.ndarray:
        """Index (into the arrays given) of the group's last event in ``[t_lo, t)``, or -1."""
        hi = self._before(user, key, t)
        has = hi > self._before(user, key, np.maximum(t_lo, 0))
        if len(self.t) == 0:
            return np.full(len(hi), -1, dtype=np.int64)
        return np.where(has, self.order[np.maximum(hi - 1, 0)], -1)

    def last_time(self, user: np.ndarray, key: np.ndarray | int, t: np.ndarray) -> np.ndarray:
        """Time of the group's last event before ``t`` (``-inf`` if none), float64."""
        hi = self._before(user, key, t)
        if len(self.t) == 0:
            return np.full(len(hi), -np.inf)
        has = hi > self._before(user, key, 0)
        return np.where(has, self.t[np.maximum(hi - 1, 0)].astype(np.float64), -np.inf)

    def first_time(
        self, user: np.ndarray, key: np.ndarray | int, t_lo: np.ndarray, t: np.ndarray
    ) -> np.ndarray:
        """Time of the group's first event in ``[t_lo, t)`` (``+inf`` if none), float64."""
        lo = self._before(user, key, np.maximum(t_lo, 0))
        if len(self.t) == 0:
            return np.full(len(lo), np.inf)
        has = self._before(user, key, t) > lo
        safe = np.minimum(lo, len(self.t) - 1)
        return np.where(has, self.t[safe].astype(np.float64), np.inf)
