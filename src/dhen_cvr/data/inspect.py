"""``dhen-cvr inspect``: a streaming summary of a day-partitioned data set.

Per day: rows written, label rates after sampling and in the full population (exact from
``_world.json`` for synthetic worlds, else estimated by weighting rows with
``1 / inclusion probability``), and — where the data has ``oracle_<head>`` columns — the
oracle ROC-AUC / PR-AUC per head, weighted by ``1 / inclusion probability`` so they
describe the population, not the sample. Over all days: sequence length percentiles.

Only the needed columns are read, one row group at a time; what is kept per row is a few
bytes (label, oracle, weight, lengths), never the feature columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import average_precision_score, roc_auc_score

from dhen_cvr.data.decode import Location, open_parquet, read_row_group
from dhen_cvr.data.spec import FeatureSpec, load_data_spec
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DataError, DhenCvrError

__all__ = ["DatasetReport", "DayReport", "format_report", "inspect_dataset"]

WORLD_FILES = ("_world.json", "world.json")  # the synthetic world summary, new name first

PERCENTILES = (50, 90, 99)


class DayReport(BaseModel):
    """One day: ``rows`` written; rates per head after sampling (``sampled_rate``) and in
    the population before sampling (``population_rate``); weighted oracle metrics (None
    when the data has no oracle column or the day has no positive)."""

    model_config = ConfigDict(extra="forbid")

    day: str
    rows: int
    sampled_rate: dict[str, float]
    population_rate: dict[str, float]
    oracle_roc_auc: dict[str, float | None]
    oracle_pr_auc: dict[str, float | None]


class DatasetReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str
    heads: list[str]
    population_source: str  # "_world.json" or "estimated from 1/inclusion probability"
    days: list[DayReport]
    sequence_lengths: dict[str, dict[str, float]]  # name -> {p50, p90, p99, max, mean}


class _DayCollector:
    """Per-row label / mask / oracle / weight of one day (a few bytes per row)."""

    def __init__(self, spec: FeatureSpec, oracle: dict[str, str]) -> None:
        self.spec, self.oracle = spec, oracle
        self.parts: dict[str, list[np.ndarray]] = {}

    def columns(self) -> list[str]:
        spec = self.spec
        cols = [lb.source for lb in spec.labels] + [lb.mask for lb in spec.labels if lb.mask]
        cols += list(self.oracle.values())
        if spec.sampling.inclusion_column:
            cols.append(spec.sampling.inclusion_column)
        return cols

    def _put(self, key: str, values: np.ndarray) -> None:
        self.parts.setdefault(key, []).append(values)

    def add(self, table: pa.Table, where: Location) -> None:
        """One row group's rows; labels must be 0/1 (a DataError names file, column, row)."""
        inclusion = self.spec.sampling.inclusion_column
        prob = table[inclusion].to_numpy() if inclusion else np.ones(table.num_rows)
        self._put("weight", 1.0 / np.asarray(prob, dtype=np.float64))
        for lb in self.spec.labels:
            labels, valid = _binary(table[lb.source], where, lb.source, "label")
            mask = valid.copy()
            if lb.mask:
                m, m_valid = _binary(table[lb.mask], where, lb.mask, "label mask")
                mask &= m_valid & (m > 0)
            self._put(f"y:{lb.name}", labels)
            self._put(f"m:{lb.name}", mask)
            if lb.name in self.oracle:
                self._put(
                    f"o:{lb.name}", np.asarray(table[self.oracle[lb.name]].to_numpy(), np.float64)
                )

    def report(self, day: str, world: dict[str, float] | None) -> DayReport:
        flat = {k: np.concatenate(v) for k, v in self.parts.items()}
        w = flat.get("weight", np.zeros(0))
        sampled, population, roc, pr = {}, {}, {}, {}
        for h in self.spec.label_names:
            m = flat.get(f"m:{h}", np.zeros(0, dtype=bool))
            y, wm = flat.get(f"y:{h}", np.zeros(0))[m], w[m]
            sampled[h] = float(y.mean()) if len(y) else 0.0
            population[h] = float(np.average(y, weights=wm)) if len(y) else 0.0
            if world is not None and h in world:
                population[h] = world[h]
            oracle = flat.get(f"o:{h}")
            roc[h], pr[h] = (None, None) if oracle is None else _metrics(y, oracle[m], wm)
        return DayReport(
            day=day,
            rows=len(w),
            sampled_rate=sampled,
            population_rate=population,
            oracle_roc_auc=roc,
            oracle_pr_auc=pr,
        )


def _binary(
    arr: pa.ChunkedArray, where: Location, column: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with nulls 0, not-null) of a 0/1 column; anything else is an error."""
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    try:
        y = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False), np.float64)
    except (TypeError, ValueError, pa.ArrowException):
        raise where.error(f"{what} column must be numeric 0/1, got {arr.type}", column) from None
    bad = (y != 0) & (y != 1)
    if bad.any():
        row = int(np.argmax(bad))
        value = arr[row].as_py()
        raise where.error(f"{what} {value!r} is not 0 or 1", column, row)
    return y, valid


def _metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[float | None, float | None]:
    if len(y) == 0 or y.min() == y.max():
        return None, None
    return (
        float(roc_auc_score(y, p, sample_weight=w)),
        float(average_precision_score(y, p, sample_weight=w)),
    )


def _world_rates(root: Path) -> dict[str, dict[str, float]] | None:
    """Exact pre-sampling rates per day from a synthetic world's ``_world.json`` (legacy: ``world.json``)."""
    path = next((root / n for n in WORLD_FILES if (root / n).is_file()), None)
    if path is None:
        return None
    days = json.loads(path.read_text()).get("days", [])
    return {
        d["day"]: {h: n / max(d["impressions"], 1) for h, n in d["positives"].items()} for d in days
    }


def _length_stats(parts: list[np.ndarray]) -> dict[str, float]:
    x = np.concatenate(parts) if parts else np.zeros(1, np.int64)
    stats = {f"p{q}": float(np.percentile(x, q)) for q in PERCENTILES}
    return {**stats, "max": float(x.max()), "mean": float(x.mean())}


def inspect_dataset(root: Path, spec: FeatureSpec | None = None) -> DatasetReport:
    """Summarise the data set at ``root`` (spec from ``root/_spec.yaml`` unless given).

    Oracle metrics are reported for the heads whose ``<oracle_prefix><head>`` column is in
    the first file; every file must then have it.
    """
    root = Path(root)
    if spec is None:
        spec = load_data_spec(root)
    folders = day_dirs(root)
    files = {f: sorted(f.glob("*.parquet")) for f in folders}
    first = next((p for ps in files.values() for p in ps), None)
    if first is None:
        raise DhenCvrError(f"{root} has no dt=YYYY-MM-DD/*.parquet files")
    names = set(open_parquet(first).schema_arrow.names)
    oracle = {h: spec.oracle_prefix + h for h in spec.label_names}
    oracle = {h: c for h, c in oracle.items() if c in names}
    world = _world_rates(root)
    lengths: dict[str, list[np.ndarray]] = {s.name: [] for s in spec.sequences}
    reports = []
    for folder, paths in files.items():
        day = folder.name.removeprefix("dt=")
        collector = _DayCollector(spec, oracle)
        columns = list(dict.fromkeys(collector.columns() + [s.timestamp for s in spec.sequences]))
        for path in paths:
            pf = open_parquet(path)
            missing = [c for c in columns if c not in set(pf.schema_arrow.names)]
            if missing:
                raise DataError("missing column", file=str(path), column=missing[0])
            first_row = 0
            for g in range(pf.num_row_groups):
                where = Location(str(path), g, first_row)
                table = read_row_group(pf, g, columns, where)
                first_row += table.num_rows
                collector.add(table, where)
                for s in spec.sequences:
                    length = pc.list_value_length(table[s.timestamp]).fill_null(0)
                    lengths[s.name].append(length.to_numpy().astype(np.int64))
        reports.append(collector.report(day, None if world is None else world.get(day)))
    return DatasetReport(
        root=str(root),
        heads=spec.label_names,
        population_source="_world.json" if world else "estimated from 1/inclusion probability",
        days=reports,
        sequence_lengths={name: _length_stats(parts) for name, parts in lengths.items()},
    )


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def format_report(report: DatasetReport) -> str:
    """Plain-text tables of a :class:`DatasetReport`."""
    heads = report.heads
    short = [h[:11] for h in heads]
    lines = [f"data set {report.root}", ""]
    lines.append(
        "label rate, % (sampled rows -> population before sampling, "
        + report.population_source
        + ")"
    )
    lines.append(f"{'day':<10} {'rows':>8}  " + "  ".join(f"{h:>17}" for h in short))
    for d in report.days:
        cells = "  ".join(
            f"{100 * d.sampled_rate[h]:7.3f} ->{100 * d.population_rate[h]:7.3f}" for h in heads
        )
        lines.append(f"{d.day:<10} {d.rows:>8}  {cells}")
    lines += ["", "oracle ROC-AUC / PR-AUC (weighted by 1 / inclusion probability)"]
    lines.append(f"{'day':<10}  " + "  ".join(f"{h:>13}" for h in short))
    for d in report.days:
        cells = "  ".join(
            f"{_fmt(d.oracle_roc_auc[h])} / {_fmt(d.oracle_pr_auc[h])}" for h in heads
        )
        lines.append(f"{d.day:<10}  {cells}")
    lines += ["", "sequence length: " + "  ".join(f"p{q}" for q in PERCENTILES) + "  max  mean"]
    for name, s in report.sequence_lengths.items():
        pct = "  ".join(f"{s[f'p{q}']:.0f}" for q in PERCENTILES)
        lines.append(f"  {name:<8} {pct}  {s['max']:.0f}  {s['mean']:.1f}")
    return "\n".join(lines)
