"""Id mapping: padding row 0, ids 1..N, one OOV bucket; stable hashing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dhen_cvr.data.mapping import hash_int64, map_ids
from dhen_cvr.data.spec import CategoricalField


def test_vocab_mapping_sends_out_of_range_and_null_to_oov() -> None:
    f = CategoricalField(name="a", vocab_size=3)
    out = map_ids(pa.array([0, 2, 3, -1, None], pa.int64()), f)
    np.testing.assert_array_equal(out, [1, 3, 4, 4, 4])


def test_hash_mapping_is_stable_in_range_and_null_is_oov() -> None:
    f = CategoricalField(name="a", hash_buckets=7)
    ints = map_ids(pa.array([5, 5, 123456789, None]), f)
    assert ints[0] == ints[1] and ints[3] == 8 and ((ints[:3] >= 1) & (ints[:3] <= 7)).all()
    strs = map_ids(pa.array(["x", "y", "x", None]), f)
    assert strs[0] == strs[2] and strs[3] == 8 and ((strs[:3] >= 1) & (strs[:3] <= 7)).all()
    # Same value -> same bucket in a separate call (stable across batches and processes).
    again = map_ids(pa.array(["y"]), f)
    assert again[0] == strs[1]


def test_hash_spreads_sequential_ids() -> None:
    h = hash_int64(np.arange(100_000, dtype=np.int64)) % np.uint64(100)
    counts = np.bincount(h.astype(np.int64), minlength=100)
    assert counts.min() > 850 and counts.max() < 1150
