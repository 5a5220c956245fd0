"""Side tables of a spec (``lookups:``): an id column mapped to an attribute (item ->
topic) from a Parquet file, vectorised, so attributes are embedded without rewriting
the logs.

A side table is read once per process (cached on its path and modification time); its
key column must be unique and non-null. An id that is not in the table gets a null
attribute, which the id mapping sends to the OOV row.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dhen_cvr.data.spec import DERIVED_VOCAB, CategoricalFeature, LookupSpec
from dhen_cvr.errors import DataError

__all__ = ["derive_time_ids", "load_lookup", "lookup_attribute"]


@functools.lru_cache(maxsize=32)
def _read(path: str, key: str, columns: tuple[str, ...], _stamp: tuple[int, int]) -> pa.Table:
    try:
        table = pq.read_table(path, columns=[key, *columns])
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read the lookup table ({err})", file=path) from None
    table = table.combine_chunks()
    keys = table.column(key)
    if keys.null_count:
        raise DataError("null key in a lookup table", file=path, column=key)
    if pc.count_distinct(keys).as_py() != len(keys):
        counts = pc.value_counts(keys.chunk(0) if keys.num_chunks else keys)
        dup = next(c["values"] for c in counts.to_pylist() if c["counts"] > 1)
        raise DataError(
            f"key {dup!r} appears more than once in a lookup table", file=path, column=key
        )
    return table


def _mtime(lookup: LookupSpec) -> tuple[int, int]:
    """(modification time, size) of the side table: the cache key of its contents."""
    try:
        st = os.stat(lookup.path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        raise DataError("lookup table does not exist", file=lookup.path) from None


def load_lookup(lookup: LookupSpec) -> pa.Table:
    """The side table (``key`` + ``columns``), checked; a DataError names the file."""
    return _read(lookup.path, lookup.key, tuple(lookup.columns), _mtime(lookup))


@dataclass(frozen=True)
class _IntIndex:
    """Integer keys -> side-table row: a direct table over ``[0, max]`` when the keys are
    dense enough (one gather per id), else the sorted keys (a binary search per id)."""

    direct: np.ndarray | None  # int64 row per key value, -1 where absent
    sorted_keys: np.ndarray
    order: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray) -> _IntIndex:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        direct = None
        if len(keys) and sorted_keys[0] >= 0 and sorted_keys[-1] < 4 * len(keys) + (1 << 20):
            direct = np.full(int(sorted_keys[-1]) + 1, -1, np.int64)
            direct[keys] = np.arange(len(keys))
        return cls(direct, sorted_keys, order)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """int64 side-table row of each id, -1 where the id is not a key."""
        if self.direct is not None:
            inside = (ids >= 0) & (ids < len(self.direct))
            return np.where(inside, self.direct[np.clip(ids, 0, len(self.direct) - 1)], -1)
        pos = np.searchsorted(self.sorted_keys, ids)
        pos = np.minimum(pos, len(self.sorted_keys) - 1)
        hit = self.sorted_keys[pos] == ids
        return np.where(hit, self.order[pos], -1)


@functools.lru_cache(maxsize=32)
def _int_index(path: str, key: str, columns: tuple[str, ...], stamp: tuple[int, int]) -> _IntIndex:
    keys = _read(path, key, columns, stamp).column(key)
    return _IntIndex.build(np.asarray(keys.to_numpy(), np.int64))


def lookup_attribute(values: pa.Array, lookup: LookupSpec, column: str) -> pa.Array:
    """``column`` of the side-table row whose key equals each of ``values`` (flat ids,
    nulls allowed); null where the id is missing from the table. Integer ids use a
    cached index of the keys (:class:`_IntIndex`), strings Arrow's hash lookup."""
    mtime = _mtime(lookup)
    table = _read(lookup.path, lookup.key, tuple(lookup.columns), mtime)
    attr = table.column(column)
    attr = attr.chunk(0) if attr.num_chunks else pa.array([], attr.type)
    keys = table.column(lookup.key)
    if pa.types.is_integer(values.type) and pa.types.is_integer(keys.type) and len(table):
        index = _int_index(lookup.path, lookup.key, tuple(lookup.columns), mtime)
        ids = np.asarray(values.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
        rows = index.rows(ids)
        if values.null_count:
            rows[np.asarray(values.is_null().to_numpy(zero_copy_only=False), bool)] = -1
        return attr.take(pa.array(rows, mask=rows < 0))
    key_set = keys.chunk(0) if keys.num_chunks else pa.array([], values.type)
    if key_set.type != values.type:
        try:
            key_set = key_set.cast(values.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"lookup {lookup.name!r}: key type {key_set.type} does not match ids of type "
                f"{values.type}",
                file=lookup.path,
                column=lookup.key,
            ) from None
    return attr.take(pc.index_in(values, value_set=key_set))


def derive_time_ids(request_time: np.ndarray, feature: CategoricalFeature) -> pa.Array:
    """int64 ``N`` raw ids of a derived feature: hour of day (0..23) or day of week
    (0..6, Monday 0) of the request time (unix seconds, UTC + ``utc_offset_hours``)."""
    assert feature.derive in DERIVED_VOCAB
    t = request_time.astype(np.int64) + round((feature.utc_offset_hours or 0.0) * 3600)
    hours, days = t // 3600, t // 86400  # 1970-01-01 was a Thursday (3 with Monday 0)
    return pa.array(hours % 24 if feature.derive == "hour_of_day" else (days + 3) % 7, pa.int64())
