"""Raw ids -> embedding rows, shared by the reader, data preparation and serving.

Row 0 is padding; ids map to ``1..N``; row ``N + 1`` is the out-of-vocabulary bucket, so
an unseen or malformed id never crashes and never aliases padding. String ids in a
``vocab_size`` feature that are not integers are OOV and raise a
:class:`~dhen_cvr.data.warning.DataWarning` (shown once per feature).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dhen_cvr.data.spec import CategoricalFeature, CategoricalField
from dhen_cvr.data.warning import warn

__all__ = ["hash_int64", "map_ids"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def hash_int64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of int64 values -> uint64 (stable across runs and machines)."""
    z = values.astype(np.int64, copy=False).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _hash_strings(arr: pa.Array) -> np.ndarray:
    """Stable uint64 hash of each string; hashes each distinct value once."""
    enc = pc.dictionary_encode(arr)
    dictionary = enc.dictionary.to_pylist()
    table = np.array(
        [
            int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
            for s in dictionary
        ],
        dtype=np.uint64,
    )
    idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return table[idx] if len(table) else np.zeros(len(arr), dtype=np.uint64)


def map_ids(
    arr: pa.Array | pa.ChunkedArray, feature: CategoricalFeature | CategoricalField
) -> np.ndarray:
    """Map a flat array of raw ids (int or string, nulls allowed) to int64 embedding rows."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    valid = ~arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(n, bool)
    is_str = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if feature.hash_buckets is not None:
        buckets = feature.hash_buckets
        if is_str:
            h = _hash_strings(arr)
        elif pa.types.is_integer(arr.type):
            h = hash_int64(arr.fill_null(0).to_numpy(zero_copy_only=False))
        else:
            raise TypeError(f"expected int or string ids, got {arr.type}")
        out = (h % np.uint64(buckets)).astype(np.int64) + 1
        out[~valid] = buckets + 1
        return out
    assert feature.vocab_size is not None
    vocab = feature.vocab_size
    oov = vocab + 1
    if is_str:
        # Strings in a fixed vocabulary must be digits; anything else is OOV.
        values = arr.to_pylist()
        raw = np.array(
            [int(s) if s is not None and str(s).isdigit() else -1 for s in values], dtype=np.int64
        )
        if ((raw < 0) & valid).any():
            warn(
                f"feature {feature.name!r} has vocab_size {vocab} but string ids that are not "
                "integers: they all map to the out-of-vocabulary row; "
                "use hash_buckets for string ids"
            )
    elif pa.types.is_integer(arr.type):
        raw = arr.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    else:
        raise TypeError(f"expected int or string ids, got {arr.type}")
    out = raw + 1
    # Nulls were filled with -1; negative ids wrap to huge unsigned values, so one
    # comparison sends them and ids >= vocab to the OOV row.
    np.putmask(out, raw.view(np.uint64) >= vocab, oov)
    return out
