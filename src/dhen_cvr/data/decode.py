"""Untrusted Parquet in, checked numpy out: the row-group decoder on the reader's hot path
(DESIGN section 2): id mapping, time features, labels, and the checks on each.

Everything the reader takes from a file passes through here, so the reader, the
statistics pass and :func:`dhen_cvr.data.validate.validate_dataset` (``dhen-cvr
validate``) apply exactly the same checks. Each problem is a :class:`~dhen_cvr.errors.DataError` whose one
line names the file, the row group, the column and, where it applies, the row *within the
file*::

    day/part-0.parquet: row group 1, column 'age', row 8195: NaN in a dense feature

Checks (all vectorised): missing columns and wrong Arrow types (from the schema, before
any data is read); null/NaN/inf in dense features; null, ragged or non-finite pretrained
vectors; sequence timestamps that are null, negative, not ascending within a row, or at or
after the request time; sequence field lists whose length differs from the timestamp
list; labels outside [0, 1]; mask values other than 0/1; inclusion probabilities outside
(0, 1]; negative or non-finite weights; empty and unreadable (corrupt) files.

Lenient by design: a null *sequence* is an empty sequence, a null label is an undefined
label (``label_mask`` 0), a null or unknown id maps to the OOV row, a null oracle is NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dhen_cvr.data.lookup import derive_time_ids, lookup_attribute
from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.spec import CategoricalFeature, CategoricalField, FeatureSpec, SequenceFeature
from dhen_cvr.errors import DataError

__all__ = [
    "Location",
    "RowBlock",
    "SequenceColumns",
    "check_schema",
    "decode_row_group",
    "open_parquet",
    "parquet_files",
    "ragged_arange",
    "read_row_group",
    "schema_problems",
]

_T = TypeVar("_T")


# ---- where a problem is ------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A file, optionally a row group of it; ``first_row`` is that group's first row in
    the file, so errors report file-level row numbers."""

    file: str
    row_group: int | None = None
    first_row: int = 0

    def error(self, message: str, column: str | None = None, row: int | None = None) -> DataError:
        """A :class:`DataError` here; ``row`` is relative to the row group."""
        return DataError(
            message,
            file=self.file,
            row_group=self.row_group,
            column=column,
            row=None if row is None else self.first_row + int(row),
        )


# ---- files ---------------------------------------------------------------------------
def parquet_files(sources: Sequence[str | Path]) -> list[Path]:
    """The Parquet files of ``sources`` (day folders, data set roots or files), sorted per
    folder, without duplicates. Hidden entries (``.*``, ``_*``: temp folders, ``_SUCCESS``)
    are ignored."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                f
                for f in path.rglob("*.parquet")
                if f.is_file()
                and not any(p.startswith((".", "_")) for p in f.relative_to(path).parts)
            )
            if not found:
                raise DataError("no Parquet files in this folder", file=str(path))
            files.extend(found)
        else:
            raise DataError("no such file or folder", file=str(path))
    if not files:
        raise DataError("no input data given (empty list of sources)")
    return list(dict.fromkeys(files))


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """Open a Parquet file; corrupt, non-Parquet and empty (0-row) files are errors."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", file=str(path)) from None
    if pf.metadata.num_row_groups == 0 or pf.metadata.num_rows == 0:
        raise DataError("empty Parquet file (0 rows)", file=str(path))
    return pf


def read_row_group(pf: pq.ParquetFile, index: int, columns: list[str], where: Location) -> pa.Table:
    """Row group ``index`` of ``pf`` (only ``columns``); a damaged page is a DataError."""
    try:
        return pf.read_row_group(index, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise where.error(f"cannot read row group ({err})") from None


# ---- schema -----------------------------------------------------------------------------
def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_id(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_time(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_timestamp(t)


def _list_of(pred: Callable[[pa.DataType], bool], fixed_ok: bool = False) -> Callable[..., bool]:
    def check(t: pa.DataType) -> bool:
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
        if fixed_ok:
            is_list = is_list or pa.types.is_fixed_size_list(t)
        return is_list and pred(t.value_type)

    return check


_NUMBER = "a number (int, float or bool)"
_ID = "an id (int or string)"


def _expected_columns(
    spec: FeatureSpec, extra_columns: Sequence[str]
) -> list[tuple[str, str, Callable[[pa.DataType], bool], str]]:
    """(column, what the spec uses it for, type check, expected type) for every column."""
    out: list[tuple[str, str, Callable[[pa.DataType], bool], str]] = [
        (spec.request_time, "request time", _is_time, "int64 unix seconds or a timestamp")
    ]
    for f in spec.dense:
        out.append((f.source, f"dense feature {f.name!r}", _is_number, _NUMBER))
    for p in spec.pretrained:
        out.append(
            (
                p.source,
                f"pretrained feature {p.name!r}",
                _list_of(_is_number, True),
                "a list of floats",
            )
        )
    for c in spec.categorical:
        if c.derive is None:
            out.append((c.source, f"categorical feature {c.name!r}", _is_id, _ID))
    for s in spec.sequences:
        out.append(
            (s.timestamp, f"sequence {s.name!r} timestamps", _list_of(_is_time), "a list of int64")
        )
        for fld in s.fields:
            out.append(
                (
                    fld.source,
                    f"sequence {s.name!r} field {fld.name!r}",
                    _list_of(_is_id),
                    "a list of ids",
                )
            )
    for lb in spec.labels:
        out.append((lb.source, f"label {lb.name!r}", _is_number, _NUMBER))
        if lb.mask:
            out.append((lb.mask, f"mask of label {lb.name!r}", _is_number, _NUMBER))
    if spec.sampling.inclusion_column:
        out.append((spec.sampling.inclusion_column, "inclusion probability", _is_number, _NUMBER))
    if spec.weight_column:
        out.append((spec.weight_column, "sample weight", _is_number, _NUMBER))
    for name in extra_columns:
        out.append((name, "extra column", _is_number, _NUMBER))
    return out


def schema_problems(
    schema: pa.Schema, spec: FeatureSpec, file: str, extra_columns: Sequence[str] = ()
) -> list[DataError]:
    """Every missing or wrongly typed column of a file, one error each."""
    problems: list[DataError] = []
    for column, role, ok, expected in _expected_columns(spec, extra_columns):
        idx = schema.get_field_index(column)
        if idx < 0:
            problems.append(
                DataError(f"missing column (the spec's {role})", file=file, column=column)
            )
        elif not ok(schema.field(idx).type):
            found = schema.field(idx).type
            problems.append(
                DataError(
                    f"wrong type for the spec's {role}: expected {expected}, found {found}",
                    file=file,
                    column=column,
                )
            )
    return problems


def check_schema(
    schema: pa.Schema, spec: FeatureSpec, file: str, extra_columns: Sequence[str] = ()
) -> None:
    """Raise the first of :func:`schema_problems`."""
    problems = schema_problems(schema, spec, file, extra_columns)
    if problems:
        raise problems[0]


# ---- decoded rows ----------------------------------------------------------------------
@dataclass
class SequenceColumns:
    """One behaviour sequence for ``N`` rows, flat (ragged) form.

    The items of row ``i`` are the flat positions ``starts[i] : starts[i] + lengths[i]``,
    oldest first, already cut to the newest ``max_len``. Position ``M`` (the last) is a
    zero *padding item*, so padding a batch is a single gather (see the reader).

    fields:  the item field names, in spec order
    lengths: int64 ``N``;  starts: int64 ``N``
    ids:     int64 ``F x (M + 1)`` mapped ids per field (1.. and OOV; 0 only at ``M``)
    time:    float32 ``(M + 1) x 2``: ``log(t[i] - t[i-1] + 1)`` (the gap to the previous
             item in the *full* sequence, so a cut item keeps its gap; 0 for a sequence's
             very first item) and ``log(request_time - t[i] + 1)``
    """

    fields: tuple[str, ...]
    lengths: np.ndarray
    starts: np.ndarray
    ids: np.ndarray
    time: np.ndarray

    @property
    def num_items(self) -> int:
        """``M``, not counting the padding item."""
        return int(self.time.shape[0]) - 1


@dataclass
class RowBlock:
    """Validated, decoded rows (one row group, or a mix of them in the shuffle buffer).

    dense:          float32 ``N x n_dense`` raw values in spec order
    pretrained:     name -> float32 ``N x dim``
    categorical:    name -> int64 ``N`` mapped ids
    sequences:      name -> :class:`SequenceColumns`
    labels:         float32 ``N x H`` (null -> 0);  label_mask: float32 ``N x H``
    inclusion_prob: float32 ``N``;  weight: float32 ``N``
    oracle:         float32 ``N x H`` (NaN where absent) or None
    extras:         name -> int64 / float32 ``N``
    """

    dense: np.ndarray
    pretrained: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    sequences: dict[str, SequenceColumns]
    labels: np.ndarray
    label_mask: np.ndarray
    inclusion_prob: np.ndarray
    weight: np.ndarray
    oracle: np.ndarray | None
    extras: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ---- column decoders -------------------------------------------------------------------
def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised (int64)."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts.astype(np.int64, copy=False) - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _no_nulls(arr: pa.Array, where: Location, column: str, what: str) -> None:
    if arr.null_count:
        raise where.error(
            f"null {what}", column, _first(arr.is_null().to_numpy(zero_copy_only=False))
        )


def _numbers(arr: pa.Array) -> np.ndarray:
    """Non-null numeric Arrow array -> float64 numpy."""
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _unix_seconds(arr: pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)


def _check_finite(x: np.ndarray, where: Location, columns: Sequence[str], what: str) -> None:
    """``x`` is ``N`` or ``N x k`` (k = len(columns)); report the first non-finite value."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (_first(bad), 0) if x.ndim == 1 else np.argwhere(bad)[0]
        value = x[row] if x.ndim == 1 else x[row, col]
        shown = "NaN" if np.isnan(value) else str(value)
        raise where.error(f"{shown} in {what}", columns[int(col)], int(row))


def decode_request_time(table: pa.Table, spec: FeatureSpec, where: Location) -> np.ndarray:
    """int64 ``N`` unix seconds of each impression."""
    arr = _column(table, spec.request_time)
    _no_nulls(arr, where, spec.request_time, "request time")
    return _unix_seconds(arr)


def decode_dense(table: pa.Table, spec: FeatureSpec, where: Location) -> np.ndarray:
    """float32 ``N x n_dense`` raw values; null/NaN/inf is an error."""
    out = np.empty((table.num_rows, len(spec.dense)), np.float32)
    for j, f in enumerate(spec.dense):
        arr = _column(table, f.source)
        _no_nulls(arr, where, f.source, "value in a dense feature")
        out[:, j] = arr.to_numpy(zero_copy_only=False)
    _check_finite(out, where, [f.source for f in spec.dense], "a dense feature")
    return out


def decode_vectors(arr: pa.Array, dim: int, where: Location, column: str) -> np.ndarray:
    """float32 ``N x dim`` from a list column; null, ragged or non-finite rows are errors."""
    _no_nulls(arr, where, column, "pretrained vector")
    if pa.types.is_fixed_size_list(arr.type):
        lengths = np.full(len(arr), arr.type.list_size, np.int64)
    else:
        lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False), np.int64)
    bad = lengths != dim
    if bad.any():
        row = _first(bad)
        raise where.error(
            f"ragged pretrained vector: {lengths[row]} values, the spec says dim {dim}", column, row
        )
    values = arr.flatten()
    if values.null_count:
        row = _first(values.is_null().to_numpy(zero_copy_only=False)) // dim
        raise where.error("null inside a pretrained vector", column, row)
    x = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), dim)
    bad_rows = ~np.isfinite(x).all(axis=1)
    if bad_rows.any():
        raise where.error("NaN/inf inside a pretrained vector", column, _first(bad_rows))
    return x


def _log_plus_one(x: np.ndarray) -> np.ndarray:
    """float32 ``log(x + 1)`` of int64 ``x >= 0`` (exact enough: x + 1 is exact in float32
    below 2**24 s; contiguous float32 ``log`` is SIMD, several times faster than log1p)."""
    out = np.add(x, 1, dtype=np.float32)
    return np.log(out, out=out)


def map_id_column(
    values: pa.Array, item: CategoricalFeature | CategoricalField, spec: FeatureSpec | None
) -> np.ndarray:
    """Embedding rows of flat raw ids, through the item's side-table lookup if it has one."""
    found = None if spec is None else spec.lookup_of(item)
    if found is not None:
        values = lookup_attribute(values, *found)
    return map_ids(values, item)


def decode_categorical(
    table: pa.Table, spec: FeatureSpec, request_time: np.ndarray | None
) -> dict[str, np.ndarray]:
    """name -> int64 ``N`` embedding rows of every categorical feature (derived ones from
    the request time, lookups through their side table)."""
    out: dict[str, np.ndarray] = {}
    for c in spec.categorical:
        if c.derive is not None:
            rt = request_time if request_time is not None else np.zeros(table.num_rows, np.int64)
            out[c.name] = map_ids(derive_time_ids(rt, c), c)
        else:
            out[c.name] = map_id_column(_column(table, c.source), c, spec)
    return out


def decode_sequence(
    table: pa.Table,
    seq: SequenceFeature,
    request_time: np.ndarray,
    where: Location,
    spec: FeatureSpec | None = None,
) -> SequenceColumns:
    """The checked, mapped and time-featurised items of one sequence, cut to ``max_len``
    (``spec``: the whole spec, for side-table lookups of its fields).

    Passes over the items are kept few: ascending order is checked on every item, then
    only each row's first item (>= 0) and last item (< request time) need checking.
    """
    ts_arr = _column(table, seq.timestamp)
    lengths = np.asarray(ts_arr.value_lengths().fill_null(0).to_numpy(), np.int64)
    ts_values = ts_arr.flatten()  # handles slicing and null lists
    starts = np.cumsum(lengths) - lengths

    def item_error(item: int, message: str, column: str = seq.timestamp) -> DataError:
        row = int(np.searchsorted(starts + lengths, item, side="right"))  # row holding item
        return where.error(f"{message} (item {item - starts[row]})", column, row)

    if ts_values.null_count:
        raise item_error(
            _first(ts_values.is_null().to_numpy(zero_copy_only=False)), "null timestamp"
        )
    ts = _unix_seconds(ts_values)
    gap = np.empty(len(ts), np.int64)
    if len(ts):
        gap[0] = 0
        np.subtract(ts[1:], ts[:-1], out=gap[1:])
        first, last = starts[lengths > 0], (starts + lengths - 1)[lengths > 0]
        gap[first] = 0
        if (gap < 0).any():
            k = _first(gap < 0)
            raise item_error(
                k, f"sequence timestamps not in ascending order ({ts[k - 1]} then {ts[k]})"
            )
        if (ts[first] < 0).any():
            k = int(first[_first(ts[first] < 0)])
            raise item_error(k, f"negative timestamp {ts[k]}")
        late = ts[last] >= request_time[lengths > 0]
        if late.any():
            j = _first(late)
            row_ts = ts[first[j] : last[j] + 1]
            k = int(first[j] + np.searchsorted(row_ts, request_time[lengths > 0][j]))
            raise item_error(
                k,
                f"sequence item at or after the request time ({ts[k]} >= {request_time[lengths > 0][j]})",
            )
    fields: dict[str, pa.Array] = {}
    for fld in seq.fields:
        arr = _column(table, fld.source)
        flens = np.asarray(arr.value_lengths().fill_null(0).to_numpy(), np.int64)
        bad = flens != lengths
        if bad.any():
            row = _first(bad)
            raise where.error(
                f"{flens[row]} items but timestamp column {seq.timestamp!r} has {lengths[row]}",
                fld.source,
                row,
            )
        values = arr.flatten()
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        fields[fld.name] = values
    keep = np.minimum(lengths, seq.max_len)
    if (keep < lengths).any():  # cut to the newest max_len before mapping (saves hashing)
        idx = ragged_arange(starts + lengths - keep, keep)
        gap, ts = gap[idx], ts[idx]
        fields = {name: values.take(pa.array(idx)) for name, values in fields.items()}
        starts = np.cumsum(keep) - keep
    m = len(gap)
    time = np.zeros((m + 1, 2), np.float32)
    time[:m, 0] = _log_plus_one(gap)
    age = np.repeat(request_time, keep)
    age -= ts
    time[:m, 1] = _log_plus_one(age)
    ids = np.zeros((len(seq.fields), m + 1), np.int64)
    for k, fld in enumerate(seq.fields):
        ids[k, :m] = map_id_column(fields[fld.name], fld, spec)
    names = tuple(f.name for f in seq.fields)
    return SequenceColumns(fields=names, lengths=keep, starts=starts, ids=ids, time=time)


def decode_labels(
    table: pa.Table, spec: FeatureSpec, where: Location
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, label_mask), float32 ``N x H``: null labels are 0 and masked out."""
    n, h = table.num_rows, len(spec.labels)
    labels = np.zeros((n, h), np.float32)
    mask = np.zeros((n, h), np.float32)
    for j, lb in enumerate(spec.labels):
        arr = _column(table, lb.source)
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
        y = _numbers(arr.fill_null(0))
        bad = ~((y >= 0) & (y <= 1))  # NaN is bad too
        if bad.any():
            row = _first(bad)
            raise where.error(f"label {y[row]} outside [0, 1]", lb.source, row)
        if lb.mask:
            m = _numbers(_column(table, lb.mask).fill_null(0))
            bad = (m != 0) & (m != 1)
            if bad.any():
                row = _first(bad)
                raise where.error(f"label mask {m[row]} is not 0 or 1", lb.mask, row)
            valid &= m == 1
        labels[:, j] = y
        mask[:, j] = valid
    return labels, mask


def _decode_positive(
    table: pa.Table, column: str | None, where: Location, what: str, upper: float | None
) -> np.ndarray:
    """float32 ``N`` from ``column`` (1 where there is none); must lie in (0, upper]
    (or [0, inf) when ``upper`` is None)."""
    if column is None:
        return np.ones(table.num_rows, np.float32)
    arr = _column(table, column)
    _no_nulls(arr, where, column, what)
    x = _numbers(arr)
    ok = (x > 0) & (x <= upper) if upper is not None else (x >= 0) & np.isfinite(x)
    if not ok.all():
        row = _first(~ok)
        limits = f"(0, {upper}]" if upper is not None else "[0, inf)"
        raise where.error(f"{what} {x[row]} outside {limits}", column, row)
    return x.astype(np.float32)


def decode_oracle(table: pa.Table, spec: FeatureSpec, heads: Sequence[str]) -> np.ndarray:
    """float32 ``N x H`` true probabilities of ``heads`` present in ``table``, NaN elsewhere."""
    out = np.full((table.num_rows, len(spec.labels)), np.nan, np.float32)
    for j, lb in enumerate(spec.labels):
        if lb.name in heads:
            arr = _column(table, spec.oracle_prefix + lb.name)
            out[:, j] = _numbers(arr.cast(pa.float64()).fill_null(np.nan))
    return out


def decode_extra(table: pa.Table, column: str, where: Location) -> np.ndarray:
    """int64 (integer/bool columns, nulls are errors) or float32 (nulls -> NaN) ``N``."""
    arr = _column(table, column)
    if pa.types.is_floating(arr.type):
        return _numbers(arr.cast(pa.float64()).fill_null(np.nan)).astype(np.float32)
    _no_nulls(arr, where, column, "value in an extra column")
    return np.asarray(arr.to_numpy(zero_copy_only=False), np.int64)


def decode_row_group(
    table: pa.Table,
    spec: FeatureSpec,
    where: Location,
    *,
    oracle_heads: Sequence[str] | None = None,
    extra_columns: Sequence[str] = (),
    errors: list[DataError] | None = None,
) -> RowBlock | None:
    """Decode and check every spec column of one row group.

    ``oracle_heads``: label names whose ``oracle_<name>`` column is present (None: the data
    set has no oracle at all). With ``errors`` given, each column's first problem is
    appended there (decoding goes on, None is returned if any); otherwise the first
    problem is raised.
    """

    failed = False

    def attempt(fallback: _T, fn: Callable[..., _T], *args: Any) -> _T:
        nonlocal failed
        if errors is None:
            return fn(*args)
        try:
            return fn(*args)
        except DataError as err:
            errors.append(err)
            failed = True
            return fallback

    empty = np.zeros(0)
    no_items = SequenceColumns((), empty, empty, empty, empty)
    request_time = attempt(None, decode_request_time, table, spec, where)
    sequences = {
        s.name: attempt(no_items, decode_sequence, table, s, request_time, where, spec)
        for s in (spec.sequences if request_time is not None else [])
    }
    labels, label_mask = attempt((empty, empty), decode_labels, table, spec, where)
    inclusion = spec.sampling.inclusion_column
    block = RowBlock(
        dense=attempt(empty, decode_dense, table, spec, where),
        pretrained={
            p.name: attempt(empty, decode_vectors, _column(table, p.source), p.dim, where, p.source)
            for p in spec.pretrained
        },
        categorical=attempt({}, decode_categorical, table, spec, request_time),
        sequences=sequences,
        labels=labels,
        label_mask=label_mask,
        inclusion_prob=attempt(
            empty, _decode_positive, table, inclusion, where, "inclusion probability", 1.0
        ),
        weight=attempt(empty, _decode_positive, table, spec.weight_column, where, "weight", None),
        oracle=None if oracle_heads is None else decode_oracle(table, spec, oracle_heads),
        extras={c: attempt(empty, decode_extra, table, c, where) for c in extra_columns},
    )
    if failed or request_time is None:
        return None
    return block
