"""Batch scoring, Parquet -> Parquet (``dhen-cvr predict``), streaming one row group at a
time::

    PRED/dt=YYYY-MM-DD/part-00000.parquet   kept id columns + ``p_<head>`` per served head
    PRED/predictions.json                   model version, heads, days, rows

Rows keep their input order (file by file, row group by row group). Each row group is
decoded by the training reader's own decoder (:func:`dhen_cvr.data.decode.decode_row_group`:
the same checks, id mapping and time features); label, mask, inclusion and weight columns
are optional here (data to score has no labels yet). Output is written atomically
(:class:`~dhen_cvr.data.writer.DatasetWriter`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dhen_cvr.data.decode import (
    Location,
    check_schema,
    decode_row_group,
    open_parquet,
    parquet_files,
    read_row_group,
)
from dhen_cvr.data.reader import collate_rows
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.data.writer import DatasetWriter
from dhen_cvr.days import day_name, resolve_days
from dhen_cvr.errors import DataError, DhenCvrError
from dhen_cvr.model.cvr_model import flat_inputs
from dhen_cvr.runtime import retain_freed_cpu_memory
from dhen_cvr.serve.artefact import ServingModel

__all__ = ["PREDICTION_PREFIX", "predict", "predict_with"]

PREDICTION_PREFIX = "p_"


def _optional_columns(spec: FeatureSpec) -> dict[str, pa.Array | float | None]:
    """Columns the decoder reads that scoring does not need -> their stand-in (None =
    null: an undefined label; a number: that constant)."""
    out: dict[str, Any] = {}
    for lb in spec.labels:
        out[lb.source] = None
        if lb.mask:
            out[lb.mask] = None
    if spec.sampling.inclusion_column:
        out[spec.sampling.inclusion_column] = 1.0
    if spec.weight_column:
        out[spec.weight_column] = 1.0
    return out


def _complete(table: pa.Table, optional: dict[str, Any]) -> pa.Table:
    n = table.num_rows
    for column, fill in optional.items():
        if column not in table.column_names:
            value = pa.nulls(n, pa.float32()) if fill is None else pa.array(np.full(n, fill))
            table = table.append_column(column, value)
    return table


def predict_with(
    model: ServingModel,
    data: str | Path,
    days: str | Sequence[str | Path],
    out: str | Path,
    *,
    keep: Sequence[str] | None = None,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """Score ``days`` of ``data`` with ``model`` into ``out`` (a new or empty folder);
    ``keep``: input columns copied to the output (default: the spec's user id, if any,
    and the request time). Returns the summary written to ``predictions.json``."""
    spec = model.spec
    keep = list(keep) if keep is not None else [c for c in (spec.user_id, spec.request_time) if c]
    clash = [c for c in keep if c.startswith(PREDICTION_PREFIX)]
    if clash:
        raise DhenCvrError(f"kept columns {clash} clash with the prediction columns p_<head>")
    optional = _optional_columns(spec)
    needed = [c for c in spec.source_columns() if c not in optional]
    day_dirs = resolve_days(data, days) if isinstance(days, str) else [Path(d) for d in days]
    rows_per_day: dict[str, int] = {}
    with DatasetWriter(out) as writer:
        for day in day_dirs:
            rows_per_day[day_name(day)] = 0
            for path in parquet_files([day]):
                pf = open_parquet(path)
                schema = _complete(pf.schema_arrow.empty_table(), optional).schema
                check_schema(schema, spec, str(path))
                missing = [c for c in keep if schema.get_field_index(c) < 0]
                if missing:
                    raise DataError(
                        f"missing column {missing[0]!r} (asked for by --keep)", file=str(path)
                    )
                present = [c for c in optional if c in pf.schema_arrow.names]
                columns = list(dict.fromkeys(needed + present + keep))
                first = 0
                for index in range(pf.metadata.num_row_groups):
                    where = Location(str(path), index, first)
                    table = read_row_group(pf, index, columns, where)
                    first += table.num_rows
                    if not table.num_rows:
                        continue
                    block = decode_row_group(_complete(table, optional), spec, where)
                    assert block is not None
                    scores = []
                    for start in range(0, len(block), batch_size):
                        rows = np.arange(start, min(start + batch_size, len(block)))
                        batch = collate_rows(block, rows)
                        scores.append(model.rows(*flat_inputs(spec, batch)).double().numpy())
                    p = np.concatenate(scores)
                    result = table.select(keep)
                    for j, head in enumerate(model.heads):
                        result = result.append_column(
                            PREDICTION_PREFIX + head, pa.array(p[:, j].astype(np.float32))
                        )
                    writer.write_day(day_name(day), result)
                    rows_per_day[day_name(day)] += table.num_rows
        summary = {
            "model_version": model.model_version,
            "heads": model.heads,
            "columns": keep + [PREDICTION_PREFIX + h for h in model.heads],
            "data": str(Path(data).resolve()),
            "rows": rows_per_day,
        }
        writer.write_text("predictions.json", json.dumps(summary, indent=2) + "\n")
    return summary


def predict(
    data: str | Path,
    days: str,
    out: str | Path,
    *,
    run: str | Path | None = None,
    artefact: str | Path | None = None,
    keep: Sequence[str] | None = None,
    batch_size: int = 4096,
    threads: int | None = None,
) -> dict[str, Any]:
    """:func:`predict_with` the newest checkpoint of ``run`` (eager) or an exported
    ``artefact``; exactly one of them."""
    from dhen_cvr.serve.artefact import load_artefact, load_serving_model

    if (run is None) == (artefact is None):
        raise DhenCvrError("give exactly one of --run or --artefact")
    if threads:
        torch.set_num_threads(threads)
    retain_freed_cpu_memory()
    if artefact is not None:
        model = load_artefact(artefact, programs=("rows",))
    else:
        assert run is not None
        model = load_serving_model(run)
    return predict_with(model, data, days, out, keep=keep, batch_size=batch_size)
