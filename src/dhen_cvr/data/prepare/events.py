"""``prepare-events``: raw event logs (CSV / Parquet) -> day-partitioned training examples.

One example per *exposure* event (mapping ``exposure``); its labels are later events of
the same (user, item) inside each label's window; its sequences are the user's events
strictly before the exposure; its counting features count the user's events in a window
before it (paper 2.3). See :mod:`dhen_cvr.data.prepare.mapping_config` for the YAML.

Two streaming passes, so files larger than memory work:

1. **Spill.** The files are read in blocks (``pyarrow.csv.open_csv`` with ``block_size``
   / Parquet ``iter_batches``). Each block is normalised (ids, event codes, unix
   seconds), rows that cannot be used are dropped and counted under exactly one reason
   (checked in this order: ``missing_user``, ``missing_item``, ``unknown_event_type``,
   ``bad_timestamp`` (null, unparseable or negative), ``out_of_window``), and the rest
   are appended to one of ``K`` temporary bucket files (Arrow IPC, uncompressed, next to
   ``out`` or in ``tmp_dir``; about the decoded size of the input) by ``hash(user) % K``.
2. **Build.** One bucket at a time is loaded (every event of its users), sorted by
   (user, time, input order), and examples are built vectorised: each rule's events get
   int64 keys ``(group << 32) | (t - t0)`` sorted once, and every exposure finds its
   sequence slice, label hits and window counts with ``np.searchsorted``. Examples are
   produced ``chunk_rows`` exposures at a time and appended to one open Parquet file
   per local day.

Memory bound (roughly; none of it grows with the input size except the id counts):
pass 1 holds the CSV reader's read-ahead (tens of ``block_size`` blocks), ``spill_rows``
buffered events and 8 bytes per distinct id (user, item, attribute; for hash-bucket
sizing); pass 2 holds the largest bucket's events (~250 bytes per event with its sort
and key arrays), one chunk of examples (``chunk_rows`` x sum of ``max_len`` x ~24 bytes),
``flush_bytes`` of buffered output and ~1 MB per open day file. ``K`` defaults to one
bucket per ``bucket_input_bytes`` of input (32 MiB of CSV; Parquet counts 4x its size),
so pass 2 needs ~250 MB for Taobao-like logs whatever their size. A bucket always holds
whole users, so one user with an enormous history is the one thing that cannot be split.
``tests/test_prepare_streaming.py`` converts an 81 MB log in a process allowed 20 MiB
beyond its warm-up peak.

Determinism: given the same inputs, mapping, seed and ``K``/``chunk_rows``, the output
is identical (negative sampling and down-sampling draw from ``seed`` per bucket). Rows
of a day are grouped by user bucket, not sorted by time (the trainer shuffles).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from dhen_cvr.data.folders import DATA_MARKER, check_replaceable, make_work_folder, write_failure
from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.prepare.common import (
    DayBuffers,
    DistinctCounter,
    local_day_numbers,
    resolve_sources,
    split_by_day,
)
from dhen_cvr.data.prepare.mapping_config import EventMapping, LabelRule
from dhen_cvr.data.prepare.report import QualityReport
from dhen_cvr.data.spec import CategoricalField, FeatureSpec
from dhen_cvr.data.writer import DatasetWriter
from dhen_cvr.errors import DataError, DhenCvrError

__all__ = ["DROP_REASONS", "StreamingOptions", "event_spec", "prepare_events"]

DROP_REASONS = (
    "missing_user",
    "missing_item",
    "unknown_event_type",
    "bad_timestamp",
    "out_of_window",
)
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_INT_RE = r"^\s*-?\d+\s*$"
_FLOAT_RE = r"^\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_MAX_REL = (1 << 32) - 1
_COMPARE = {
    "==": pc.equal,
    "!=": pc.not_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
    "<": pc.less,
    "<=": pc.less_equal,
}


def _condition_column(label: str) -> str:
    """Spill column holding, per event, whether label ``label``'s condition passed."""
    return f"condition:{label}"


class StreamingOptions(BaseModel):
    """Resource knobs of :func:`prepare_events` (not data semantics; see module docs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    buckets: int | None = Field(default=None, gt=0, le=65536)  # K; None: from input size
    bucket_input_bytes: int = Field(default=32 << 20, gt=0)  # input bytes per bucket (auto K)
    block_size: int = Field(default=1 << 20, ge=1 << 12)  # CSV block bytes
    batch_rows: int = Field(default=65536, gt=0)  # Parquet batch rows
    spill_rows: int = Field(default=1 << 20, gt=0)  # events buffered before a spill
    chunk_rows: int = Field(default=32768, gt=0)  # exposures built at once
    flush_bytes: int = Field(default=64 << 20, gt=0)  # output buffered before a write
    max_open_files: int = Field(default=64, gt=0)  # open output day files
    tmp_dir: Path | None = None  # spill folder parent; default: next to out


# ---------------------------------------------------------------------------------------
# pass 1: read, normalise, drop, spill
# ---------------------------------------------------------------------------------------
def _file_format(path: Path, mapping: EventMapping) -> str:
    if mapping.source.format != "auto":
        return mapping.source.format
    name = path.name.lower()
    return "parquet" if name.endswith((".parquet", ".pq")) else "csv"


def _arrow_timezone(tz: dt.tzinfo) -> str:
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        assert offset is not None
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return str(tz)


class _EventReader:
    """Streams one file's needed columns as record batches; errors name the file."""

    def __init__(self, mapping: EventMapping, options: StreamingOptions) -> None:
        self.mapping = mapping
        self.options = options
        self.needed = mapping.source_columns()
        self.headers_skipped = 0  # header rows matching source.column_names

    def _csv_types(self) -> dict[str, pa.DataType]:
        cols = self.mapping.columns
        types: dict[str, pa.DataType] = {cols.event: pa.string(), cols.timestamp: pa.string()}
        id_type = {"int": pa.int64(), "string": pa.string()}.get(self.mapping.source.id_type)
        if id_type is not None:
            for c in [cols.user, cols.item, *cols.item_attributes.values()]:
                types[c] = id_type
        return types

    def _check_columns(self, path: Path, names: list[str]) -> None:
        for col in self.needed:
            if col not in names:
                raise DataError(
                    f"column not found; the file has columns {names}"
                    + (
                        ""
                        if self.mapping.source.column_names
                        else " (for a CSV without a header, set source.column_names)"
                    ),
                    file=str(path),
                    column=col,
                )

    def batches(self, path: Path) -> Iterator[pa.RecordBatch]:
        try:
            if _file_format(path, self.mapping) == "parquet":
                yield from self._parquet(path)
            else:
                yield from self._csv(path)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowKeyError, OSError) as err:
            hint = ""
            if "conversion" in str(err).lower() and self.mapping.source.id_type != "string":
                hint = " (ids that are not all integers need source.id_type: string)"
            raise DataError(f"cannot read: {err}{hint}", file=str(path)) from None

    def _header_row(self, path: Path, parse: pacsv.ParseOptions) -> bool:
        """With ``source.column_names`` (a header-less CSV): True if line 1 is exactly
        those names (a header to skip); a DataError if it looks like another header."""
        names = self.mapping.source.column_names
        assert names is not None
        read = pacsv.ReadOptions(block_size=1 << 16, column_names=names, use_threads=False)
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
            try:
                rows = reader.read_next_batch().slice(0, 2).to_pylist()
            except StopIteration:
                return False
        first = [str(rows[0][c] or "").strip() for c in names]
        if [v.lower() for v in first] == [c.lower() for c in names]:
            return True

        def number(v: object) -> bool:
            try:
                float(str(v))
            except ValueError:
                return False
            return True

        cols = self.mapping.columns
        numeric = [cols.timestamp] if self.mapping.time.format is None else []
        if self.mapping.source.id_type == "int":
            numeric += [cols.user, cols.item]
        known = {c.lower() for c in [*names, *self.needed]}
        looks_like_names = any(v.lower() in known for v in first)
        text_over_numbers = len(rows) > 1 and any(
            rows[0][c] not in (None, "") and not number(rows[0][c]) and number(rows[1][c])
            for c in numeric
        )
        if looks_like_names or text_over_numbers:
            raise DataError(
                f"line 1 looks like a header row {first}, but the mapping's "
                f"source.column_names {names} says the file has none: either remove "
                "source.column_names and name the header's columns under columns:, or make "
                "the header match column_names (it is then skipped)",
                file=str(path),
            )
        return False

    def _csv(self, path: Path) -> Iterator[pa.RecordBatch]:
        src = self.mapping.source
        parse = pacsv.ParseOptions(delimiter=src.delimiter)
        skip = 0
        if src.column_names is not None and self._header_row(path, parse):
            skip = 1
            self.headers_skipped += 1
        read = pacsv.ReadOptions(
            block_size=self.options.block_size,
            column_names=src.column_names,
            skip_rows=skip,
            use_threads=False,
        )
        with pa.input_stream(str(path), compression="detect") as stream:
            probe = pacsv.open_csv(stream, read_options=read, parse_options=parse)
            self._check_columns(path, probe.schema.names)
        convert = pacsv.ConvertOptions(
            include_columns=self.needed, column_types=self._csv_types(), strings_can_be_null=True
        )
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
            yield from reader

    def _parquet(self, path: Path) -> Iterator[pa.RecordBatch]:
        pf = pq.ParquetFile(path)
        self._check_columns(path, pf.schema_arrow.names)
        yield from pf.iter_batches(batch_size=self.options.batch_rows, columns=self.needed)


class _Normalizer:
    """Raw batch -> the spill schema (``user, item, attr_<a>..., event, ts, row``) with
    unusable rows dropped and counted. Id column types are fixed by the first batch."""

    def __init__(self, mapping: EventMapping, report: QualityReport) -> None:
        self.mapping = mapping
        self.report = report
        self.event_values = pa.array(mapping.event_types, pa.string())
        self.window = mapping.time.window_seconds()
        self.arrow_tz = _arrow_timezone(mapping.time.tz)
        self.id_types: dict[str, tuple[pa.DataType, str]] = {}
        self.rows_seen = 0
        self.first_ts: int | None = None  # kept events, unix seconds
        self.last_ts: int | None = None
        cols = mapping.columns
        self.id_columns = {"user": cols.user, "item": cols.item}
        self.id_columns.update({f"attr_{a}": c for a, c in cols.item_attributes.items()})

    def _ids(self, arr: pa.Array, key: str, file: Path) -> pa.Array:
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        source = self.id_columns[key]
        if key not in self.id_types:
            forced = self.mapping.source.id_type
            if forced == "int" or (forced == "auto" and pa.types.is_integer(arr.type)):
                target = pa.int64()
            elif (
                forced == "string"
                or pa.types.is_string(arr.type)
                or pa.types.is_large_string(arr.type)
                or pa.types.is_null(arr.type)
            ):
                target = pa.string()
            else:
                raise DataError(
                    f"ids must be integers or strings, got {arr.type}",
                    file=str(file),
                    column=source,
                )
            self.id_types[key] = (target, str(file))
        target, first_file = self.id_types[key]
        if arr.type == target:
            return arr
        try:
            return arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"ids of type {arr.type} cannot be read as {target} (the type in {first_file}); "
                "set source.id_type: string",
                file=str(file),
                column=source,
            ) from None

    def _seconds(self, arr: pa.Array, file: Path) -> tuple[np.ndarray, np.ndarray]:
        """-> (unix seconds int64, valid bool)."""
        time = self.mapping.time
        column = self.mapping.columns.timestamp
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        divisor = _UNIT_DIVISOR[time.unit]
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            if time.format is not None:
                parsed = pc.strptime(arr, format=time.format, unit="s", error_is_null=True)
                arr = pc.assume_timezone(
                    parsed, self.arrow_tz, ambiguous="earliest", nonexistent="earliest"
                )
                return self._seconds(arr, file)
            is_int = pc.fill_null(pc.match_substring_regex(arr, _INT_RE), False)
            ints = pc.cast(pc.if_else(is_int, pc.utf8_trim_whitespace(arr), None), pa.int64())
            is_float = pc.and_(
                pc.invert(is_int), pc.fill_null(pc.match_substring_regex(arr, _FLOAT_RE), False)
            )
            if pc.any(is_float).as_py():
                floats = pc.cast(pc.if_else(is_float, arr, None), pa.float64())
                values = pc.if_else(is_int, pc.cast(ints, pa.float64()), floats)
                return self._seconds(values, file)
            arr = ints
        if pa.types.is_timestamp(arr.type):
            if arr.type.tz is None:
                arr = pc.assume_timezone(
                    arr, self.arrow_tz, ambiguous="earliest", nonexistent="earliest"
                )
            divisor = _UNIT_DIVISOR[arr.type.unit]
            arr = arr.cast(pa.int64())
        if pa.types.is_integer(arr.type):
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            raw = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            valid &= raw >= 0
            return np.floor_divide(raw, divisor), valid
        if pa.types.is_floating(arr.type):
            raw_f = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            valid = np.isfinite(raw_f) & (raw_f >= 0)
            secs = np.floor(np.where(valid, raw_f, 0.0) / divisor).astype(np.int64)
            return secs, valid
        raise DataError(
            f"timestamps must be numbers, strings (with time.format) or timestamps, got {arr.type}",
            file=str(file),
            column=column,
        )

    def normalize(self, batch: pa.RecordBatch, file: Path) -> pa.Table:
        cols = self.mapping.columns
        n = batch.num_rows
        self.report.rows_read += n
        first_row = self.rows_seen
        self.rows_seen += n
        ids = {key: self._ids(batch.column(src), key, file) for key, src in self.id_columns.items()}

        def present(a: pa.Array) -> np.ndarray:
            ok = a.is_valid()
            if pa.types.is_string(a.type):
                ok = pc.and_(ok, pc.greater(pc.utf8_length(a), 0))
            return ok.fill_null(False).to_numpy(zero_copy_only=False)

        events = batch.column(cols.event)
        if pa.types.is_dictionary(events.type):
            events = events.dictionary_decode()
        codes = pc.index_in(events.cast(pa.string()), value_set=self.event_values)
        ts, ts_valid = self._seconds(batch.column(cols.timestamp), file)
        start, end = self.window
        in_window = np.ones(n, dtype=bool)
        if start is not None:
            in_window &= ts >= start
        if end is not None:
            in_window &= ts < end
        checks = {
            "missing_user": present(ids["user"]),
            "missing_item": present(ids["item"]),
            "unknown_event_type": codes.is_valid().to_numpy(zero_copy_only=False),
            "bad_timestamp": ts_valid,
            "out_of_window": in_window,
        }
        keep = np.ones(n, dtype=bool)
        for reason in DROP_REASONS:
            failed = keep & ~checks[reason]
            self.report.drop(reason, int(failed.sum()))
            keep &= checks[reason]
        idx = pa.array(np.flatnonzero(keep))
        columns = {key: arr.take(idx) for key, arr in ids.items()}
        columns["event"] = pa.array(
            codes.fill_null(0).to_numpy(zero_copy_only=False)[keep].astype(np.int16)
        )
        columns["ts"] = pa.array(ts[keep])
        columns["row"] = pa.array(np.flatnonzero(keep).astype(np.int64) + first_row)
        for lb in self.mapping.condition_labels:
            passed = self._condition(batch, lb, file)
            columns[_condition_column(lb.name)] = pa.array(passed[keep].astype(np.int8))
        if keep.any():
            lo, hi = int(ts[keep].min()), int(ts[keep].max())
            self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
            self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        return pa.table(columns)

    def _condition(self, batch: pa.RecordBatch, label: LabelRule, file: Path) -> np.ndarray:
        """Per row: does its own ``condition.column`` pass the label's test (null: no)."""
        cond = label.condition
        assert cond is not None
        arr = batch.column(cond.column)
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        value: float | str = cond.value
        if isinstance(value, str):
            arr = arr.cast(pa.string())
        else:
            try:
                arr = pc.cast(arr, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(
                    f"labels[{label.name!r}].condition {cond.op} {value} needs numbers, but "
                    f"the column has values of type {arr.type} that are not all numbers",
                    file=str(file),
                    column=cond.column,
                ) from None
        passed = _COMPARE[cond.op](arr, pa.scalar(value, arr.type))
        return passed.fill_null(False).to_numpy(zero_copy_only=False)


class _Spiller:
    """Appends normalised events to ``K`` bucket files (Arrow IPC) by ``hash(user) % K``.

    Events are buffered until ``spill_rows`` are pending, then appended as one record
    batch per bucket to that bucket's open file. At most ``max_open`` files are open; a
    bucket whose file was closed continues in a new part file.
    """

    def __init__(self, root: Path, buckets: int, spill_rows: int, max_open: int = 256) -> None:
        self.root = root
        self.k = buckets
        self.spill_rows = spill_rows
        self.max_open = max_open
        self._field = CategoricalField(name="user_bucket", hash_buckets=buckets)
        self._pending: list[list[pa.Table]] = [[] for _ in range(buckets)]
        self._rows = 0
        self._files: list[list[Path]] = [[] for _ in range(buckets)]
        self._open: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchFileWriter]] = {}

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        bucket = map_ids(table["user"], self._field) - 1
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.k + 1))
        ordered = table.take(pa.array(order))
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            self._pending[b].append(ordered.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))
        self._rows += table.num_rows
        if self._rows >= self.spill_rows:
            self.flush()

    def _writer(self, b: int, schema: pa.Schema) -> pa.ipc.RecordBatchFileWriter:
        if b in self._open:
            return self._open[b][1]
        if len(self._open) >= self.max_open:
            oldest = next(iter(self._open))
            sink, writer = self._open.pop(oldest)
            writer.close()
            sink.close()
        path = self.root / f"bucket-{b:05d}-part-{len(self._files[b]):04d}.arrow"
        self._files[b].append(path)
        sink = pa.OSFile(str(path), "wb")
        self._open[b] = (sink, pa.ipc.new_file(sink, schema))
        return self._open[b][1]

    def flush(self) -> None:
        for b, tables in enumerate(self._pending):
            if tables:
                table = pa.concat_tables(tables).combine_chunks()  # one record batch
                self._writer(b, table.schema).write_table(table)
        self._pending = [[] for _ in range(self.k)]
        self._rows = 0

    def close(self) -> None:
        """Flush and close every file; then :meth:`read` may be called."""
        self.flush()
        for sink, writer in self._open.values():
            writer.close()
            sink.close()
        self._open = {}

    def abort(self) -> None:
        """Close every file without flushing (after a failed write)."""
        for sink, writer in self._open.values():
            for close in (writer.close, sink.close):
                with contextlib.suppress(OSError):
                    close()
        self._open = {}

    def read(self, b: int) -> pa.Table | None:
        """Every event of bucket ``b`` (None when it has none); deletes its files."""
        if not self._files[b]:
            return None
        tables = []
        for path in self._files[b]:
            with pa.OSFile(str(path)) as source:
                tables.append(pa.ipc.open_file(source).read_all())
        table = pa.concat_tables(tables)
        for path in self._files[b]:
            path.unlink()
        return table


# ---------------------------------------------------------------------------------------
# pass 2: build examples per bucket
# ---------------------------------------------------------------------------------------
def _codes(arr: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """Dense int64 codes of the values (-1 for null) and the number of distinct values."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = pc.dictionary_encode(arr)
    codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, len(enc.dictionary)


def _lookup(sorted_unique: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in ``sorted_unique``, or -1 where absent."""
    if len(sorted_unique) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    i = np.searchsorted(sorted_unique, values)
    i_clipped = np.minimum(i, len(sorted_unique) - 1)
    return np.where(sorted_unique[i_clipped] == values, i_clipped, -1)


def _key(group: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Sortable int64 key of (group, relative time); groups < 2**31, rel in [0, 2**32)."""
    return (group.astype(np.int64) << 32) | rel.astype(np.int64)


def _ranges(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ranges ``[start, start + length)`` and the list offsets."""
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    flat = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - start, length)
    return flat, offsets


def _window_count(
    keys: np.ndarray, group: np.ndarray, lo: np.ndarray, hi: np.ndarray, hi_side: str
) -> np.ndarray:
    """Events of ``group`` with rel time in [lo, hi) (``hi_side='left'``) or [lo, hi]."""
    valid = group >= 0
    g = np.where(valid, group, 0)
    upper = np.searchsorted(keys, _key(g, np.clip(hi, 0, _MAX_REL)), side=hi_side)  # type: ignore[call-overload]
    lower = np.searchsorted(keys, _key(g, np.clip(lo, 0, _MAX_REL)), side="left")
    return np.where(valid, upper - lower, 0)


class _Groups:
    """Dense codes of (user, value) pairs, e.g. (user, item): ``code`` per event (-1 for
    a null value) and ``lookup`` for pairs that may not occur in the bucket."""

    def __init__(self, user: np.ndarray, values: np.ndarray, n_values: int) -> None:
        self._n = n_values + 1
        raw = np.where(values >= 0, user * self._n + values, -1)
        valid = raw >= 0
        self._unique, inverse = np.unique(raw[valid], return_inverse=True)
        self.code = np.full(len(raw), -1, dtype=np.int64)
        self.code[valid] = inverse.reshape(-1)

    def lookup(self, user: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Code of each (user, value), -1 where the pair has no event (or value is null)."""
        return np.where(values >= 0, _lookup(self._unique, user * self._n + values), -1)


class _BucketIndex:
    """One bucket's events sorted by (user, time, input order), with the group codes and,
    per mapping rule, the sorted keys ``(group << 32) | (t - t0)`` that
    :func:`np.searchsorted` queries."""

    def __init__(self, table: pa.Table, m: EventMapping) -> None:
        event_code = {e: i for i, e in enumerate(m.event_types)}
        user, _ = _codes(table["user"])
        ts = table["ts"].to_numpy()
        order = np.lexsort((table["row"].to_numpy(), ts, user))
        self.table = table.take(pa.array(order))
        self.user, self.ts = user[order], ts[order]
        self.event = self.table["event"].to_numpy().astype(np.int64)
        self.rel = self.ts - int(self.ts.min())
        max_window = max([lb.window for lb in m.labels] + [0])
        if int(self.rel.max()) + max_window > _MAX_REL:
            raise DataError("the events span more than 136 years; check time.unit")
        item, n_items = _codes(self.table["item"])
        self.item = item
        self.pairs = _Groups(self.user, item, n_items)  # (user, item)
        self.attr_values: dict[str, np.ndarray] = {}
        self.attr_groups: dict[str, _Groups] = {}
        for a in m.attributes:
            codes, n_values = _codes(self.table[f"attr_{a}"])
            self.attr_values[a] = codes
            self.attr_groups[a] = _Groups(self.user, codes, n_values)

        def of(events: list[str]) -> np.ndarray:
            return np.isin(self.event, [event_code[e] for e in events])

        def sorted_keys(group: np.ndarray, mask: np.ndarray) -> np.ndarray:
            sel = mask & (group >= 0)
            return np.sort(_key(group[sel], self.rel[sel]))

        # sequences: positions of their events; keys already sorted (user, time)
        self.seq_rows = {s.name: np.flatnonzero(of(s.events)) for s in m.sequences}
        self.seq_keys = {n: _key(self.user[r], self.rel[r]) for n, r in self.seq_rows.items()}
        self.label_keys = {
            lb.name: sorted_keys(self.pairs.code, of(lb.events)) for lb in m.labels if lb.events
        }
        self.count_keys = {
            c.name: sorted_keys(self.group_codes(c.scope), of(c.events)) for c in m.counts
        }
        self.exposures = np.flatnonzero(of(m.exposure_types))

    def group_codes(self, scope: str) -> np.ndarray:
        """Per event: its user (``user``), (user, item) or (user, attribute) code."""
        if scope == "user":
            return self.user
        if scope == "item":
            return self.pairs.code
        return self.attr_groups[scope].code


class _Requests:
    """The examples of one chunk: ``src`` (the exposure event: user and request time),
    ``item_row`` (the event whose item and attributes are the candidate: the exposure
    itself, or a sampled negative's) and ``is_exposure``."""

    def __init__(
        self, index: _BucketIndex, src: np.ndarray, item_row: np.ndarray, is_exposure: np.ndarray
    ) -> None:
        self.src, self.item_row, self.is_exposure = src, item_row, is_exposure
        self.user = index.user[src]
        self.rel = index.rel[src]
        self.ts = index.ts[src]
        self.pair = np.where(
            is_exposure, index.pairs.code[src], index.pairs.lookup(self.user, index.item[item_row])
        )

    def group(self, index: _BucketIndex, scope: str) -> np.ndarray:
        """Per example: its group code for a count rule's ``scope`` (-1: no events)."""
        if scope == "user":
            return self.user
        if scope == "item":
            return self.pair
        values = index.attr_values[scope][self.item_row]
        own = index.attr_groups[scope].code[self.src]
        return np.where(self.is_exposure, own, index.attr_groups[scope].lookup(self.user, values))

    def select(self, index: _BucketIndex, keep: np.ndarray) -> _Requests:
        return _Requests(index, self.src[keep], self.item_row[keep], self.is_exposure[keep])


class _BucketBuilder:
    """Builds the examples of one bucket's users (see the module docstring)."""

    def __init__(
        self, mapping: EventMapping, options: StreamingOptions, report: QualityReport
    ) -> None:
        self.m = mapping
        self.options = options
        self.report = report

    def build(self, table: pa.Table, bucket: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """Yield (local day number per row, examples) for ``chunk_rows`` exposures at a time."""
        index = _BucketIndex(table, self.m)
        rng = np.random.default_rng([self.m.seed, bucket])
        chunk = self.options.chunk_rows
        for lo in range(0, len(index.exposures), chunk):
            exposures = index.exposures[lo : lo + chunk]
            self.report.count("exposures", len(exposures))
            req = self._requests(index, exposures, rng)
            labels = self._labels(index, req)
            sample_rate = None
            if self.m.downsample is not None:
                req, labels, sample_rate = self._downsample(index, req, labels, rng)
            cols: dict[str, pa.Array | pa.ChunkedArray] = {"ts": pa.array(req.ts)}
            cols.update(self._candidate_columns(index, req))
            cols.update(self._sequence_columns(index, req))
            for c in self.m.counts:
                group = req.group(index, c.scope)
                counts = _window_count(
                    index.count_keys[c.name], group, req.rel - c.window, req.rel, "left"
                )
                cols[c.name] = pa.array(counts.astype(np.float32))
            cols.update({name: pa.array(y) for name, y in labels.items()})
            if sample_rate is not None:
                cols["sample_rate"] = pa.array(sample_rate)
            out = pa.table({name: cols[name] for name in self.m.output_columns()})
            yield local_day_numbers(req.ts, self.m.time.tz), out

    def _requests(
        self, index: _BucketIndex, exposures: np.ndarray, rng: np.random.Generator
    ) -> _Requests:
        """The exposures plus, with ``negatives``, k popularity-drawn items per exposure
        that the user never interacted with (others are rejected and counted)."""
        is_exposure = np.ones(len(exposures), dtype=bool)
        if self.m.negatives is None:
            return _Requests(index, exposures, exposures, is_exposure)
        k = self.m.negatives.per_exposure
        candidates = rng.choice(index.exposures, size=len(exposures) * k)
        owners = np.repeat(exposures, k)
        fresh = index.pairs.lookup(index.user[owners], index.item[candidates]) < 0
        self.report.count("negatives_rejected", int((~fresh).sum()))
        self.report.count("sampled_negatives", int(fresh.sum()))
        return _Requests(
            index,
            np.concatenate([exposures, owners[fresh]]),
            np.concatenate([exposures, candidates[fresh]]),
            np.concatenate([is_exposure, np.zeros(int(fresh.sum()), dtype=bool)]),
        )

    def _labels(self, index: _BucketIndex, req: _Requests) -> dict[str, np.ndarray]:
        """Per head: 1 if a label event of the same (user, item) is in [t, t + window]."""
        labels: dict[str, np.ndarray] = {}
        for lb in self.m.labels:
            if lb.exposure:
                labels[lb.name] = req.is_exposure.astype(np.int8)
                continue
            if lb.condition is not None:
                passed = index.table[_condition_column(lb.name)].to_numpy()[req.src] > 0
                labels[lb.name] = (req.is_exposure & passed).astype(np.int8)
                continue
            keys = index.label_keys[lb.name]
            hits = _window_count(keys, req.pair, req.rel, req.rel + lb.window, "right")
            labels[lb.name] = (hits > 0).astype(np.int8)
        return labels

    def _downsample(
        self,
        index: _BucketIndex,
        req: _Requests,
        labels: dict[str, np.ndarray],
        rng: np.random.Generator,
    ) -> tuple[_Requests, dict[str, np.ndarray], np.ndarray]:
        """Keep label-negative rows with probability r; -> kept rows and ``sample_rate``."""
        assert self.m.downsample is not None
        rate = self.m.downsample.negative_rate
        negative = np.ones(len(req.src), dtype=bool)
        for name in self.m.downsample_labels:
            negative &= labels[name] == 0
        keep = ~negative | (rng.random(len(req.src)) < rate)
        self.report.count("downsampled_away", int((~keep).sum()))
        sample_rate = np.where(negative[keep], rate, 1.0).astype(np.float32)
        return req.select(index, keep), {k: v[keep] for k, v in labels.items()}, sample_rate

    def _candidate_columns(self, index: _BucketIndex, req: _Requests) -> dict[str, pa.ChunkedArray]:
        table, m = index.table, self.m
        item_rows = pa.array(req.item_row)
        cols = {
            "user_id": table["user"].take(pa.array(req.src)),
            m.item_column(): table["item"].take(item_rows),
        }
        for a in m.attributes:
            cols[m.item_column(a)] = table[f"attr_{a}"].take(item_rows)
        return cols

    def _sequence_columns(self, index: _BucketIndex, req: _Requests) -> dict[str, pa.Array]:
        """Per sequence: the user's newest ``max_len`` events strictly before the request
        time (oldest first) as list columns, one per field plus ``<name>_ts``."""
        cols: dict[str, pa.Array] = {}
        for s in self.m.sequences:
            keys = index.seq_keys[s.name]
            end = np.searchsorted(keys, _key(req.user, req.rel), side="left")
            first = np.searchsorted(keys, _key(req.user, np.zeros_like(req.rel)), side="left")
            start = np.maximum(first, end - s.max_len)
            flat, offsets = _ranges(start, end - start)
            rows = index.seq_rows[s.name][flat]
            off = pa.array(offsets.astype(np.int32))
            cols[self.m.sequence_column(s.name, "ts")] = pa.ListArray.from_arrays(
                off, pa.array(index.ts[rows])
            )
            for f in s.fields:
                if f == "event":
                    values: pa.Array = pa.array(index.event[rows])
                else:
                    column = "item" if f == "item" else f"attr_{f}"
                    values = index.table[column].take(pa.array(rows)).combine_chunks()
                cols[self.m.sequence_column(s.name, f)] = pa.ListArray.from_arrays(off, values)
        return cols


# ---------------------------------------------------------------------------------------
# spec and entry point
# ---------------------------------------------------------------------------------------
def event_spec(mapping: EventMapping, buckets: dict[str, int]) -> FeatureSpec:
    """The feature spec of the columns :func:`prepare_events` writes.

    ``buckets``: hash buckets per id kind (``user``, ``item``, each attribute).
    """
    m = mapping
    features: list[dict[str, object]] = []
    if m.user_feature:
        features.append(
            {
                "name": "user_id",
                "role": "categorical",
                "category": "categorical",
                "hash_buckets": buckets["user"],
                "table": "user",
            }
        )
    features.append(
        {
            "name": m.item_column(),
            "role": "categorical",
            "category": "candidate",
            "hash_buckets": buckets["item"],
            "table": "item",
        }
    )
    for a in m.attributes:
        features.append(
            {
                "name": m.item_column(a),
                "role": "categorical",
                "category": "candidate",
                "hash_buckets": buckets[a],
                "table": a,
            }
        )
    for c in m.counts:
        features.append({"name": c.name, "role": "dense", "category": "counting", "log1p": True})
    for s in m.sequences:
        fields: list[dict[str, object]] = []
        for f in s.fields:
            entry: dict[str, object] = {"name": m.sequence_column(s.name, f)}
            if f == "event":
                entry.update(vocab_size=len(m.event_types), table="event")
            else:
                entry.update(hash_buckets=buckets[f], table=f)
            fields.append(entry)
        features.append(
            {
                "name": s.name,
                "role": "sequence",
                "category": "sequence",
                "max_len": s.max_len,
                "timestamp": m.sequence_column(s.name, "ts"),
                "fields": fields,
            }
        )
    spec: dict[str, object] = {
        "name": m.name,
        "request_time": "ts",
        "user_id": "user_id",
        "features": features,
        "labels": [
            {"name": lb.name, "serve": lb.serve, **({"mask": lb.mask} if lb.mask else {})}
            for lb in m.labels
        ],
    }
    if m.downsample is not None:
        spec["sampling"] = {
            "negative_rate": m.downsample.negative_rate,
            "inclusion_column": "sample_rate",
        }
    return FeatureSpec.from_dict(spec, f"generated from mapping {m.name!r}")


def _auto_buckets(files: list[Path], mapping: EventMapping, options: StreamingOptions) -> int:
    if options.buckets is not None:
        return options.buckets
    size = sum(
        f.stat().st_size * (4 if _file_format(f, mapping) == "parquet" else 1) for f in files
    )
    return max(1, min(4096, math.ceil(size / options.bucket_input_bytes)))


def _duration(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _check_span(normalizer: _Normalizer, m: EventMapping, report: QualityReport) -> None:
    """Warn when the kept events span less than a day (or than the longest label
    window): label windows of the later exposures reach past the log's end."""
    if normalizer.first_ts is None or normalizer.last_ts is None:
        return
    span = normalizer.last_ts - normalizer.first_ts
    window = max((lb.window for lb in m.labels if lb.events), default=0)
    if span >= max(86400, window):
        return
    tz = m.time.tz
    first, last = (
        dt.datetime.fromtimestamp(t, tz).isoformat()
        for t in (normalizer.first_ts, normalizer.last_ts)
    )
    cut = f"; label windows (up to {_duration(window)}) are cut off at its end" if window else ""
    report.warn(
        f"the log spans only {_duration(span)} ({first} .. {last}), less than one day{cut}, "
        "so late exposures read as negatives, and there is no later day to evaluate on"
    )


def prepare_events(
    events: str | Path | Sequence[str | Path],
    mapping: EventMapping,
    out: str | Path,
    *,
    overwrite: bool = False,
    options: StreamingOptions | None = None,
) -> QualityReport:
    """Convert event logs to a day-partitioned data set at ``out`` (atomically).

    ``events``: files, folders or glob patterns (CSV, optionally compressed, or Parquet).
    Writes ``dt=*/part-*.parquet``, ``_spec.yaml``, ``_quality.json`` and ``_quality.txt``;
    returns the quality report. Raises :class:`DataError` on unreadable input and
    :class:`DhenCvrError` when no example survives.
    """
    options = options or StreamingOptions()
    patterns = [events] if isinstance(events, (str, Path)) else list(events)
    files = resolve_sources(patterns)
    m = mapping
    report = QualityReport(
        "prepare-events",
        [str(f) for f in files],
        labels={lb.name: lb.mask for lb in m.labels},
        drop_reasons=DROP_REASONS,
        sequences={s.name: (m.sequence_column(s.name, "ts"), s.max_len) for s in m.sequences},
        timezone=m.time.tz,
    )
    k = _auto_buckets(files, m, options)
    out = Path(out)
    # fail before the long pass 1
    check_replaceable(out, DATA_MARKER, "a data set", overwrite=overwrite)
    spill_root = make_work_folder(options.tmp_dir or out.parent, out.name, "spill")
    try:
        reader = _EventReader(m, options)
        normalizer = _Normalizer(m, report)
        spiller = _Spiller(spill_root, k, options.spill_rows)
        distinct = {key: DistinctCounter() for key in ["user", "item", *m.attributes]}
        try:
            for file in files:
                for batch in reader.batches(file):
                    table = normalizer.normalize(batch, file)
                    distinct["user"].add(table["user"])
                    distinct["item"].add(table["item"])
                    for a in m.attributes:
                        distinct[a].add(table[f"attr_{a}"])
                    spiller.add(table)
            spiller.close()
            if reader.headers_skipped:
                report.count("header_rows_skipped", reader.headers_skipped)
        except OSError as err:  # reading errors are DataErrors by now: this is the spill
            spiller.abort()
            raise write_failure(
                err, spill_root, " (the bucket spill files; --tmp-dir puts them elsewhere)"
            ) from None
        buckets = {key: m.hashing.size(key, c.count) for key, c in distinct.items()}
        report.id_stats = {
            key: {"distinct": distinct[key].count, "buckets": buckets[key]} for key in distinct
        }
        builder = _BucketBuilder(m, options, report)
        with DatasetWriter(out, overwrite=overwrite) as writer:
            with DayBuffers(writer, options.flush_bytes, options.max_open_files) as day_buffers:
                for b in range(k):
                    table = spiller.read(b)
                    if table is None:
                        continue
                    for days, examples in builder.build(table, b):
                        for day, part in split_by_day(examples, days):
                            report.add_examples(day, part)
                            day_buffers.add(day, part)
                    del table
            if report.examples == 0:
                raise DhenCvrError(
                    f"no examples: no exposure event ({', '.join(m.exposure_types)}) survived "
                    f"({report.rows_read:,} rows read, dropped {report.dropped})"
                )
            report.check_labels()
            _check_span(normalizer, m, report)
            writer.write_spec(event_spec(m, buckets))
            report.save(writer)
    finally:
        shutil.rmtree(spill_root, ignore_errors=True)
    return report
