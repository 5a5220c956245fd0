"""KeyedTimeIndex look-ups equal naive float64 loops over the events."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dhen_cvr.data.synth.timeindex import KeyedTimeIndex

SPAN = 1000
Events = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Queries = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def events() -> Events:
    rng = np.random.default_rng(0)
    n = 400
    return (
        rng.integers(0, 5, n),  # user
        rng.integers(0, 3, n),  # key
        rng.integers(0, SPAN, n),  # t (duplicates on purpose)
        rng.random(n),  # weight
    )


@pytest.fixture(scope="module")
def queries() -> Queries:
    rng = np.random.default_rng(1)
    m = 300
    return rng.integers(0, 6, m), rng.integers(0, 3, m), rng.integers(0, SPAN + 1, m)


def _group(events: Events, u: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    user, key, t, w = events
    sel = (user == u) & (key == k)
    order = np.argsort(t[sel], kind="stable")
    return t[sel][order], w[sel][order]


def test_count_and_first_last_match_naive_loops(events: Events, queries: Queries) -> None:
    user, key, t, _ = events
    index = KeyedTimeIndex(user, key, t, n_keys=3, span=SPAN)
    qu, qk, qt = queries
    lo = qt - 200
    count = index.count(qu, qk, lo, qt)
    last = index.last_time(qu, qk, qt)
    first = index.first_time(qu, qk, lo, qt)
    last_idx = index.last_event(qu, qk, qt, lo)
    for i in range(len(qu)):
        gt, _ = _group(events, qu[i], qk[i])
        inside = gt[(gt >= max(lo[i], 0)) & (gt < qt[i])]
        assert count[i] == len(inside)
        before = gt[gt < qt[i]]
        assert last[i] == (before[-1] if len(before) else -math.inf)
        assert first[i] == (inside[0] if len(inside) else math.inf)
        if len(inside):
            assert t[last_idx[i]] == inside[-1] and user[last_idx[i]] == qu[i]
        else:
            assert last_idx[i] == -1


def test_decayed_sum_matches_naive_loop(events: Events, queries: Queries) -> None:
    user, key, t, w = events
    index = KeyedTimeIndex(user, key, t, n_keys=3, span=SPAN, weight=w)
    qu, qk, qt = queries
    got = index.decayed_sum(qu, qk, qt, tau=50.0, max_events=4)
    for i in range(len(qu)):
        gt, gw = _group(events, qu[i], qk[i])
        keep = gt < qt[i]
        # the last 4 events before the query (ties kept in input order, as the index does)
        bt, bw = gt[keep][-4:], gw[keep][-4:]
        expected = sum(wj * math.exp(-(qt[i] - tj) / 50.0) for tj, wj in zip(bt, bw, strict=True))
        assert got[i] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_empty_index_answers_neutral_values() -> None:
    empty = np.zeros(0, dtype=np.int64)
    index = KeyedTimeIndex(empty, empty, empty, n_keys=2, span=SPAN)
    q = np.array([0, 1])
    assert index.count(q, q, q, q + 5).tolist() == [0, 0]
    assert index.decayed_sum(q, q, q + 5, tau=1.0).tolist() == [0.0, 0.0]
    assert index.last_time(q, q, q + 5).tolist() == [-math.inf, -math.inf]
    assert index.first_time(q, q, q, q + 5).tolist() == [math.inf, math.inf]
    assert index.last_event(q, q, q + 5, q).tolist() == [-1, -1]
