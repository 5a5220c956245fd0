"""Pieces shared by ``prepare-events`` and ``prepare-table``: input files, local days,
distinct-id counting and bounded per-day output buffers."""

from __future__ import annotations

import datetime as dt
import glob
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.spec import CategoricalField
from dhen_cvr.data.writer import DatasetWriter
from dhen_cvr.errors import DhenCvrError

__all__ = [
    "DayBuffers",
    "DistinctCounter",
    "day_string",
    "local_day_numbers",
    "resolve_sources",
    "split_by_day",
]

_EPOCH = dt.date(1970, 1, 1).toordinal()
_DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".gz", ".bz2", ".zst")
_HASH_ALL = CategoricalField(name="distinct", hash_buckets=1 << 62)


def resolve_sources(patterns: Sequence[str | Path]) -> list[Path]:
    """Files named by paths, folders (their data files, recursively) or glob patterns,
    in sorted order per pattern, without duplicates."""
    files: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.name.endswith(_DATA_SUFFIXES)
            )
        elif p.is_file():
            found = [p]
        elif glob.has_magic(str(pattern)):
            found = sorted(Path(f) for f in glob.glob(str(pattern), recursive=True))
            found = [f for f in found if f.is_file()]
        else:
            raise DhenCvrError(f"input {pattern} does not exist")
        if not found:
            raise DhenCvrError(f"no input files match {pattern}")
        files.extend(found)
    return list(dict.fromkeys(files))


def local_day_numbers(ts: np.ndarray, tz: dt.tzinfo) -> np.ndarray:
    """Unix seconds -> local calendar day numbers (days since 1970-01-01 in ``tz``).

    Offsets are looked up once per distinct 15-minute UTC block (zone transitions fall
    on such boundaries), so this is vectorised and exact for IANA zones with DST.
    """
    ts = np.asarray(ts, dtype=np.int64)
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        assert offset is not None
        return (ts + int(offset.total_seconds())) // 86400
    blocks, inverse = np.unique(ts // 900, return_inverse=True)
    offsets = np.zeros(len(blocks), dtype=np.int64)
    for i, block in enumerate(blocks.tolist()):
        utc = dt.datetime.fromtimestamp(block * 900, dt.timezone.utc)
        offsets[i] = int(utc.astimezone(tz).utcoffset().total_seconds())  # type: ignore[union-attr]
    return (ts + offsets[inverse.reshape(-1)]) // 86400


def day_string(day_number: int) -> str:
    """Days since 1970-01-01 -> ``YYYY-MM-DD``."""
    return dt.date.fromordinal(_EPOCH + int(day_number)).isoformat()


def split_by_day(table: pa.Table, day_numbers: np.ndarray) -> Iterator[tuple[str, pa.Table]]:
    """The rows of ``table`` grouped by day, oldest day first, row order kept."""
    if table.num_rows == 0:
        return
    order = np.argsort(day_numbers, kind="stable")
    days, starts = np.unique(day_numbers[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    for i, day in enumerate(days.tolist()):
        yield day_string(day), table.take(pa.array(order[bounds[i] : bounds[i + 1]]))


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sort-based unique (no hash table: about 1 extra byte per value of memory)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class DistinctCounter:
    """Exact count of distinct ids (int or string) fed in batches.

    Memory: 8 bytes per distinct id (a sorted array of 62-bit hashes; a collision
    between two ids is a ~1e-7 event at a billion ids).
    """

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        ids = ids.drop_null()
        if len(ids) == 0:
            return
        batch = _sorted_unique(map_ids(ids, _HASH_ALL))
        self._pending.append(batch)
        self._pending_size += len(batch)
        if self._pending_size > max(1 << 16, len(self._seen)):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._seen = _sorted_unique(np.concatenate([self._seen, *self._pending]))
            self._pending, self._pending_size = [], 0

    @property
    def count(self) -> int:
        self._merge()
        return len(self._seen)


class DayBuffers:
    """Collects output rows per day and appends them, as row groups, to one open Parquet
    file per day inside a :class:`DatasetWriter`'s temporary folder.

    When more than ``max_bytes`` are buffered, the largest day is written out, so memory
    stays bounded while row groups stay large; at most ``max_open`` files are open at
    once (the least recently used is closed; a later row of that day starts a new part).
    Use it as a context manager inside the writer's: a normal exit writes the rest and
    closes the files, an exception only closes them (the writer then discards all).
    """

    def __init__(
        self, writer: DatasetWriter, max_bytes: int = 64 << 20, max_open: int = 64
    ) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.max_open = max_open
        self._tables: dict[str, list[pa.Table]] = {}
        self._day_bytes: dict[str, int] = {}
        self._open: dict[str, pq.ParquetWriter] = {}
        self._parts: dict[str, int] = {}
        self._schema: pa.Schema | None = None

    def add(self, day: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema):
            table = table.cast(self._schema)
        self._tables.setdefault(day, []).append(table)
        self._day_bytes[day] = self._day_bytes.get(day, 0) + table.nbytes
        if sum(self._day_bytes.values()) >= self.max_bytes:
            self._write(max(self._day_bytes, key=self._day_bytes.__getitem__))

    def _file(self, day: str) -> pq.ParquetWriter:
        if day in self._open:
            self._open[day] = self._open.pop(day)  # most recently used last
            return self._open[day]
        if len(self._open) >= self.max_open:
            oldest = next(iter(self._open))
            self._open.pop(oldest).close()
        folder = self.writer.tmp / f"dt={day}"
        folder.mkdir(exist_ok=True)
        idx = self._parts.get(day, 0)
        self._parts[day] = idx + 1
        assert self._schema is not None
        self._open[day] = pq.ParquetWriter(
            folder / f"part-stream-{idx:05d}.parquet", self._schema, compression="zstd"
        )
        return self._open[day]

    def _write(self, day: str) -> None:
        table = pa.concat_tables(self._tables.pop(day)).combine_chunks()
        del self._day_bytes[day]
        self._file(day).write_table(table, row_group_size=self.writer.row_group_size)

    def __enter__(self) -> DayBuffers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                for day in sorted(self._tables):
                    self._write(day)
        finally:
            for w in self._open.values():
                w.close()
            self._open, self._tables, self._day_bytes = {}, {}, {}
