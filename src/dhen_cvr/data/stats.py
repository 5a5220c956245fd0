"""Min-max statistics of the dense features (DESIGN 2 and 3.1, paper 3.1 pre-processing).

Fitted on the training days by one streaming pass (row group by row group, dense columns
only), saved as JSON next to the model, and applied by :func:`transform_dense`:
``log1p(max(x, 0))`` for features the spec marks ``log1p: true``, then
``(x - min) / (max - min)`` clipped to [0, 1]; a constant feature maps to 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dhen_cvr.data.decode import (
    Location,
    decode_dense,
    open_parquet,
    parquet_files,
    read_row_group,
)
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.errors import DataError, DhenCvrError

__all__ = ["MinMaxStats", "fit_minmax_stats", "transform_dense"]


@dataclass
class MinMaxStats:
    """Per dense feature (spec order): the range of its (log1p'd where flagged) values."""

    names: list[str]
    minimum: list[float]
    maximum: list[float]
    log1p: list[bool]

    def __post_init__(self) -> None:
        n = len(self.names)
        if not len(self.minimum) == len(self.maximum) == len(self.log1p) == n:
            raise DhenCvrError("min-max stats: names, minimum, maximum and log1p differ in length")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinMaxStats:
        try:
            return cls(
                names=[str(n) for n in data["names"]],
                minimum=[float(v) for v in data["minimum"]],
                maximum=[float(v) for v in data["maximum"]],
                log1p=[bool(v) for v in data["log1p"]],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DhenCvrError(f"invalid min-max stats: {err!r}") from None

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> MinMaxStats:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DhenCvrError(f"cannot read min-max stats {path}: {err}") from None
        return cls.from_dict(data)

    def check_spec(self, spec: FeatureSpec) -> None:
        """Raise unless these stats describe exactly ``spec.dense`` (names and log1p)."""
        expected = ([f.name for f in spec.dense], [f.log1p for f in spec.dense])
        if (self.names, self.log1p) != expected:
            raise DhenCvrError(
                f"min-max stats are for dense features {self.names} (log1p {self.log1p}); "
                f"the spec has {expected[0]} (log1p {expected[1]})"
            )


def _log1p_where(x: np.ndarray, flags: np.ndarray) -> np.ndarray:
    out = x.astype(np.float64)
    out[:, flags] = np.log1p(np.maximum(out[:, flags], 0.0))
    return out


def fit_minmax_stats(sources: Sequence[str | Path] | str | Path, spec: FeatureSpec) -> MinMaxStats:
    """One streaming pass over the dense columns of ``sources`` (day folders or files);
    values are checked like the reader checks them (NaN/inf are errors)."""
    dense = spec.dense
    names = [f.name for f in dense]
    flags = np.array([f.log1p for f in dense], bool)
    lo = np.full(len(dense), np.inf)
    hi = np.full(len(dense), -np.inf)
    columns = list(dict.fromkeys(f.source for f in dense))
    seen = 0
    paths = parquet_files([sources] if isinstance(sources, (str, Path)) else list(sources))
    for path in paths:
        pf = open_parquet(path)
        schema = pf.schema_arrow
        for f in dense:
            idx = schema.get_field_index(f.source)
            if idx < 0:
                raise DataError(
                    f"missing column (dense feature {f.name!r})", file=str(path), column=f.source
                )
            t = schema.field(idx).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise DataError(
                    f"wrong type for dense feature {f.name!r}: expected a number, found {t}",
                    file=str(path),
                    column=f.source,
                )
        if not dense:
            continue
        first_row = 0
        for i in range(pf.metadata.num_row_groups):
            where = Location(str(path), i, first_row)
            first_row += pf.metadata.row_group(i).num_rows
            x = _log1p_where(
                decode_dense(read_row_group(pf, i, columns, where), spec, where), flags
            )
            if len(x):
                lo = np.minimum(lo, x.min(axis=0))
                hi = np.maximum(hi, x.max(axis=0))
                seen += len(x)
    if dense and not seen:
        raise DataError("no rows to fit min-max statistics on")
    return MinMaxStats(names, lo.tolist(), hi.tolist(), flags.tolist())


def transform_dense(x: torch.Tensor, stats: MinMaxStats) -> torch.Tensor:
    """Raw dense ``B x n_dense`` -> normalised ``B x n_dense`` in [0, 1] (see module doc)."""
    if x.shape[-1] != len(stats.names):
        raise DhenCvrError(f"dense input has {x.shape[-1]} features, stats have {len(stats.names)}")
    lo = torch.tensor(stats.minimum, dtype=x.dtype, device=x.device)
    span = torch.tensor(stats.maximum, dtype=torch.float64) - torch.tensor(
        stats.minimum, dtype=torch.float64
    )
    scale = torch.where(span > 0, 1.0 / span.clamp_min(1e-300), torch.zeros_like(span))
    scale = scale.clamp(max=torch.finfo(x.dtype).max).to(x.device, x.dtype)
    flags = torch.tensor(stats.log1p, dtype=torch.bool, device=x.device)
    x = torch.where(flags, torch.log1p(x.clamp_min(0)), x)
    return ((x - lo) * scale).clamp(0.0, 1.0)
