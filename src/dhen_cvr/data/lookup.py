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
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dhen_cvr.data.spec import DERIVED_VOCAB, CategoricalFeature, LookupSpec
from dhen_cvr.errors import DataError

__all__ = ["derive_time_ids", "load_lookup", "lookup_attribute"]


@functools.lru_cache(maxsize=32)
def _read(path: str, key: str, columns: tuple[str, ...], _mtime_ns: int) -> pa.Table:
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


def load_lookup(lookup: LookupSpec) -> pa.Table:
    """The side table (``key`` + ``columns``), checked; a DataError names the file."""
    path = Path(lookup.path)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        raise DataError("lookup table does not exist", file=str(path)) from None
    try:
        return _read(str(path), lookup.key, tuple(lookup.columns), mtime)
    except pa.ArrowInvalid as err:  # a named column is missing
        raise DataError(f"lookup table lacks a column ({err})", file=str(path)) from None


def lookup_attribute(values: pa.Array, lookup: LookupSpec, column: str) -> pa.Array:
    """``column`` of the side-table row whose key equals each of ``values`` (flat ids,
    nulls allowed); null where the id is missing from the table."""
    table = load_lookup(lookup)
    keys = table.column(lookup.key).chunk(0) if len(table) else pa.array([], values.type)
    if keys.type != values.type:
        try:
            keys = keys.cast(values.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"lookup {lookup.name!r}: key type {keys.type} does not match ids of type "
                f"{values.type}",
                file=lookup.path,
                column=lookup.key,
            ) from None
    index = pc.index_in(values, value_set=keys)
    attr = table.column(column)
    attr = attr.chunk(0) if attr.num_chunks else pa.array([], attr.type)
    return attr.take(index)


def derive_time_ids(request_time: np.ndarray, feature: CategoricalFeature) -> pa.Array:
    """int64 ``N`` raw ids of a derived feature: hour of day (0..23) or day of week
    (0..6, Monday 0) of the request time (unix seconds, UTC + ``utc_offset_hours``)."""
    assert feature.derive in DERIVED_VOCAB
    t = request_time.astype(np.int64) + round((feature.utc_offset_hours or 0.0) * 3600)
    hours, days = t // 3600, t // 86400  # 1970-01-01 was a Thursday (3 with Monday 0)
    return pa.array(hours % 24 if feature.derive == "hour_of_day" else (days + 3) % 7, pa.int64())
