"""A validated request -> the one-user model inputs, through the training reader's own
decoders (:mod:`dhen_cvr.data.decode`, :mod:`dhen_cvr.data.mapping`): the request is laid
out as Arrow columns named like the training data's, so ids are mapped, dense values and
vectors read, and sequence time features computed (and cut to the model's newest items)
by exactly the code that prepared the training batches.

Output layout (:class:`~dhen_cvr.model.cvr_model.ServedCVRModel`, ``one_user=True``):
``dense N x n``, ``pretrained N x sum(dim)``, ``categorical N x c``, then per sequence
``ids 1 x T x F``, ``time 1 x T x 2``, ``lengths 1`` with ``T = max(1, items)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from dhen_cvr.data.decode import (
    Location,
    SequenceColumns,
    decode_dense,
    decode_sequence,
    decode_vectors,
)
from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.spec import FeatureSpec, SequenceFeature
from dhen_cvr.errors import DataError

__all__ = ["encode_request", "sequence_inputs"]

_WHERE = Location("request")


def _array(values: list[Any], typ: pa.DataType | None, where: str) -> pa.Array:
    try:
        return pa.array(values, typ)
    except (pa.ArrowException, OverflowError) as err:
        raise DataError(f"{where}: cannot read these values ({err})") from None


def _candidate_table(spec: FeatureSpec, request: dict[str, Any]) -> pa.Table:
    """``N`` rows, one column per non-sequence feature (per-candidate value, else the
    request-level one), named by the feature's source column."""
    user = request["user"]["features"]
    candidates = request["candidates"]
    columns: dict[str, pa.Array] = {}
    for f in spec.features:
        if isinstance(f, SequenceFeature):
            continue
        shared = user.get(f.name)
        values = [c.get(f.name) if c.get(f.name) is not None else shared for c in candidates]
        typ = {"dense": pa.float64(), "pretrained": pa.list_(pa.float32())}.get(f.role)
        columns[f.source] = _array(values, typ, f"candidates[*].{f.name}")
    return pa.table(columns) if columns else pa.table({"_rows": pa.nulls(len(candidates))})


def _user_table(spec: FeatureSpec, request: dict[str, Any]) -> pa.Table:
    """One row: the request time and every sequence's list columns."""
    columns = {spec.request_time: _array([request["request_time"]], pa.int64(), "request_time")}
    given = request["user"]["sequences"]
    for s in spec.sequences:
        items = given.get(s.name) or {}
        where = f"user.sequences.{s.name}"
        ts = items.get("timestamps", [])
        columns[s.timestamp] = _array([ts], pa.list_(pa.int64()), f"{where}.timestamps")
        for fld in s.fields:
            values = items.get(fld.name, [])
            typ = pa.string() if values and isinstance(values[0], str) else pa.int64()
            columns[fld.source] = _array([values], pa.list_(typ), f"{where}.{fld.name}")
    return pa.table(columns)


def sequence_inputs(seq: SequenceColumns) -> tuple[Tensor, Tensor, Tensor]:
    """One row's decoded sequence -> ``ids 1 x T x F``, ``time 1 x T x 2``, ``lengths 1``
    (``T = max(1, items)``; an empty sequence is one padding item)."""
    m = int(seq.lengths[0])
    t = max(1, m)
    ids = np.ascontiguousarray(seq.ids[:, :t].T)  # the padding item (zeros) when m == 0
    return (
        torch.from_numpy(ids)[None],
        torch.from_numpy(np.ascontiguousarray(seq.time[:t]))[None],
        torch.tensor([m], dtype=torch.long),
    )


def encode_request(spec: FeatureSpec, request: dict[str, Any]) -> tuple[Tensor, ...]:
    """A plain validated request (:meth:`RequestSchema.dump`) -> one-user model inputs.
    Bad values the schema cannot see raise :class:`DataError` (a 422)."""
    n = len(request["candidates"])
    table = _candidate_table(spec, request)
    dense = torch.from_numpy(decode_dense(table, spec, _WHERE)) if spec.dense else None
    vectors = [
        torch.from_numpy(decode_vectors(table.column(f.source).chunk(0), f.dim, _WHERE, f.source))
        for f in spec.pretrained
    ]
    ids = [torch.from_numpy(map_ids(table.column(f.source), f)) for f in spec.categorical]
    out: list[Tensor] = [
        dense if dense is not None else torch.zeros(n, 0),
        torch.cat(vectors, 1) if vectors else torch.zeros(n, 0),
        torch.stack(ids, 1) if ids else torch.zeros(n, 0, dtype=torch.long),
    ]
    user = _user_table(spec, request)
    request_time = np.array([request["request_time"]], np.int64)
    for s in spec.sequences:
        out += sequence_inputs(decode_sequence(user, s, request_time, _WHERE))
    return tuple(out)
