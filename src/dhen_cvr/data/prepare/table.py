"""``prepare-table``: flat impression tables (Ali-CCP style) -> the section 2 format.

Each input CSV becomes one consecutive day (``--csv train.csv --csv val.csv --csv
test.csv`` -> days ``start_date``, ``+1``, ``+2``) so the usual "train on days 1..N,
evaluate on day N+1" commands apply. The tables carry no time, so every row's request
time ``ts`` is its day's midnight UTC; there are no sequences.

The conversion head is defined by the formulation:

- ``click_masked`` (paper 2.1, the default): CVR = P(conversion | click); the
  conversion label gets ``mask: <click>`` so its loss and metrics use clicked rows only;
- ``entire_space``: the conversion label is defined on every impression (pCTCVR, the
  ESMM view, DESIGN 4.3).

The click head is always present with ``serve: false`` (paper 2.2). A conversion
without a click, a label other than 0/1, or a missing / non-finite dense value is a
:class:`DataError` naming the file, column and row (1-based data row, header excluded);
nothing is written then. Files are read in blocks, so size is not limited by memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dhen_cvr.data.prepare.common import DayBuffers, DistinctCounter, resolve_sources
from dhen_cvr.data.prepare.mapping_config import TableMapping
from dhen_cvr.data.prepare.report import QualityReport
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.data.writer import DatasetWriter
from dhen_cvr.errors import DataError

__all__ = ["Formulation", "prepare_table", "table_spec"]

Formulation = Literal["click_masked", "entire_space"]


def table_spec(
    mapping: TableMapping, formulation: Formulation, buckets: dict[str, int]
) -> FeatureSpec:
    """The feature spec of the columns :func:`prepare_table` writes."""
    click, conversion = mapping.label_names
    features: list[dict[str, object]] = [
        {
            "name": c.out,
            "role": "categorical",
            "category": c.category.value,
            "hash_buckets": buckets[c.out],
        }
        for c in mapping.categorical
    ]
    features += [
        {"name": c.out, "role": "dense", "category": c.category.value, "log1p": c.log1p}
        for c in mapping.dense
    ]
    conv_label: dict[str, object] = {"name": conversion}
    if formulation == "click_masked":
        conv_label["mask"] = click
    spec: dict[str, object] = {
        "name": mapping.name,
        "request_time": "ts",
        "features": features,
        "labels": [{"name": click, "serve": False}, conv_label],
    }
    if mapping.user is not None:
        spec["user_id"] = mapping.user
    return FeatureSpec.from_dict(spec, f"generated from table mapping {mapping.name!r}")


class _TableConverter:
    """Validates and renames one CSV block; errors name file, column and row."""

    def __init__(self, mapping: TableMapping) -> None:
        self.m = mapping
        self.id_types: dict[str, pa.DataType] = {}
        self.distinct = {c.out: DistinctCounter() for c in mapping.categorical}

    def _labels(self, batch: pa.RecordBatch, file: Path, first_row: int) -> list[np.ndarray]:
        out = []
        for col in (self.m.click, self.m.conversion):
            arr = batch.column(col)
            values = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            bad = ~np.isin(values, (0.0, 1.0))
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"label must be 0 or 1, got {arr[i].as_py()!r}",
                    file=str(file),
                    column=col,
                    row=first_row + i + 1,
                )
            out.append(values.astype(np.int8))
        click, conversion = out
        orphan = (conversion == 1) & (click == 0)
        if orphan.any():
            i = int(np.argmax(orphan))
            raise DataError(
                f"{self.m.conversion}=1 with {self.m.click}=0: a conversion without a click "
                f"({int(orphan.sum())} such row(s) in this block); fix the data, it is not kept",
                file=str(file),
                column=self.m.conversion,
                row=first_row + i + 1,
            )
        return out

    def _ids(self, arr: pa.Array, out: str, file: Path) -> pa.Array:
        if out not in self.id_types:
            self.id_types[out] = pa.int64() if pa.types.is_integer(arr.type) else pa.string()
        target = self.id_types[out]
        try:
            return arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"ids of type {arr.type} where earlier blocks had {target}", file=str(file)
            ) from None

    def convert(self, batch: pa.RecordBatch, file: Path, first_row: int, ts: int) -> pa.Table:
        click, conversion = self._labels(batch, file, first_row)
        cols: dict[str, pa.Array] = {"ts": pa.array(np.full(batch.num_rows, ts, dtype=np.int64))}
        for c in self.m.categorical:
            ids = self._ids(batch.column(c.column), c.out, file)
            self.distinct[c.out].add(ids)
            cols[c.out] = ids
        for c in self.m.dense:
            arr = batch.column(c.column)
            if not (
                pa.types.is_floating(arr.type)
                or pa.types.is_integer(arr.type)
                or pa.types.is_null(arr.type)
            ):
                raise DataError(
                    f"dense values must be numbers, got {arr.type}", file=str(file), column=c.column
                )
            values = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"missing or non-finite dense value {arr[i].as_py()!r}",
                    file=str(file),
                    column=c.column,
                    row=first_row + i + 1,
                )
            cols[c.out] = pa.array(values.astype(np.float32))
        click_name, conversion_name = self.m.label_names
        cols[click_name] = pa.array(click)
        cols[conversion_name] = pa.array(conversion)
        return pa.table(cols)


def _csv_batches(
    file: Path, needed: list[str], delimiter: str, block_size: int
) -> Iterator[pa.RecordBatch]:
    """The ``needed`` columns of one CSV in blocks; unreadable input is a DataError."""
    read = pacsv.ReadOptions(block_size=block_size, use_threads=False)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    try:
        with pa.input_stream(str(file), compression="detect") as stream:
            probe = pacsv.open_csv(stream, read_options=read, parse_options=parse)
            missing = [c for c in needed if c not in probe.schema.names]
            if missing:
                raise DataError(
                    f"column not found; the file has columns {probe.schema.names}",
                    file=str(file),
                    column=missing[0],
                )
        convert = pacsv.ConvertOptions(include_columns=needed)
        with pa.input_stream(str(file), compression="detect") as stream:
            yield from pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise DataError(f"cannot read: {err}", file=str(file)) from None


def prepare_table(
    csvs: str | Path | Sequence[str | Path],
    mapping: TableMapping,
    out: str | Path,
    *,
    formulation: Formulation = "click_masked",
    start_date: dt.date = dt.date(2024, 1, 1),
    overwrite: bool = False,
    block_size: int = 1 << 22,
) -> QualityReport:
    """Convert flat CSV tables to a day-partitioned data set at ``out`` (atomically):
    the i-th file (after glob expansion, in the order given) is day ``start_date + i``."""
    patterns = [csvs] if isinstance(csvs, (str, Path)) else list(csvs)
    files = resolve_sources(patterns)
    click, conversion = mapping.label_names
    masks = {click: None, conversion: click if formulation == "click_masked" else None}
    report = QualityReport("prepare-table", [str(f) for f in files], labels=masks)
    converter = _TableConverter(mapping)
    needed = mapping.source_columns()
    with DatasetWriter(out, overwrite=overwrite) as writer, DayBuffers(writer) as buffers:
        for i, file in enumerate(files):
            day = start_date + dt.timedelta(days=i)
            ts = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp())
            rows = 0
            for batch in _csv_batches(file, needed, mapping.delimiter, block_size):
                table = converter.convert(batch, file, rows, ts)
                rows += batch.num_rows
                report.add_examples(day.isoformat(), table)
                buffers.add(day.isoformat(), table)
            if rows == 0:
                raise DataError(
                    f"no data rows (a header only); each --csv is one day, so day {i + 1} "
                    f"({day}) would be missing and the later days would be numbered one "
                    "lower: drop the file or give it rows",
                    file=str(file),
                )
            report.rows_read += rows
        buckets = {
            name: mapping.hashing.size(name, counter.count)
            for name, counter in converter.distinct.items()
        }
        report.id_stats = {
            name: {"distinct": converter.distinct[name].count, "buckets": buckets[name]}
            for name in buckets
        }
        writer.write_spec(table_spec(mapping, formulation, buckets))
        report.save(writer)
    return report
