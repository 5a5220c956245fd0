"""Write the world: chunks of users -> behaviour -> daily impressions -> sampled Parquet."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import average_precision_score, roc_auc_score

from dhen_cvr.data.spec import FeatureSpec, SequenceFeature
from dhen_cvr.data.synth.behaviour import DAY, EventLog, simulate_behaviour, simulate_interests
from dhen_cvr.data.synth.catalogue import Catalogue, build_catalogue, build_users
from dhen_cvr.data.synth.config import CONVERSION_TYPES, HEADS, WorldConfig, world_spec
from dhen_cvr.data.synth.impressions import BehaviourIndex, DayImpressions, UserSnapshot, draw_day
from dhen_cvr.data.writer import DatasetWriter

__all__ = ["WORLD_FILE", "DayStats", "WorldSummary", "synthesize"]

WORLD_FILE = "_world.json"  # underscore: Parquet dataset readers skip it


class DayStats(BaseModel):
    """One logged day. Counts and rates are of the full population *before* sampling
    (``rows`` is what was written); oracle AUCs are on that full population."""

    model_config = ConfigDict(extra="forbid")

    day: str
    impressions: int
    rows: int
    non_converting: int
    kept_non_converting: int
    positives: dict[str, int]
    oracle_mean: dict[str, float]
    oracle_roc_auc: dict[str, float | None]
    oracle_pr_auc: dict[str, float | None]

    def rate(self, head: str) -> float:
        return self.positives[head] / max(self.impressions, 1)


class WorldSummary(BaseModel):
    """What :func:`synthesize` wrote; saved as ``_world.json`` in the data set folder."""

    model_config = ConfigDict(extra="forbid")

    config: WorldConfig
    origin_unix: int
    days: list[DayStats]
    seconds: float

    def format(self) -> str:
        """A short table: rows per day, label rates before sampling, oracle ROC-AUC."""
        heads = list(HEADS)
        head = f"{'day':<10} {'impr':>8} {'rows':>7} " + " ".join(f"{h[:8]:>8}" for h in heads)
        head += "  oracle ROC-AUC " + "/".join(h[:5] for h in heads)
        lines = [head]
        for d in self.days:
            rates = " ".join(f"{100 * d.rate(h):7.3f}%" for h in heads)
            aucs = "/".join(
                "  -  " if d.oracle_roc_auc[h] is None else f"{d.oracle_roc_auc[h]:.3f}"
                for h in heads
            )
            lines.append(f"{d.day:<10} {d.impressions:>8} {d.rows:>7} {rates}  {aucs}")
        rows = sum(d.rows for d in self.days)
        impressions = sum(d.impressions for d in self.days)
        lines.append(
            f"{len(self.days)} days, {impressions} impressions, {rows} rows written "
            f"(converting rows + {self.config.negative_rate:g} of the rest) in {self.seconds:.1f}s"
        )
        return "\n".join(lines)


@dataclass
class _SequenceSlicer:
    """Cuts one sorted event log into per-impression list columns (last ``max_len`` before ts)."""

    log: EventLog
    spec: SequenceFeature
    span: int

    def __post_init__(self) -> None:
        self.code = self.log.user.astype(np.int64) * self.span + self.log.t

    def columns(self, user: np.ndarray, t: np.ndarray, origin_unix: int) -> dict[str, pa.Array]:
        base = user.astype(np.int64) * self.span
        hi = np.searchsorted(self.code, base + t, side="left")  # items strictly before t
        lo = np.maximum(np.searchsorted(self.code, base, side="left"), hi - self.spec.max_len)
        lengths = hi - lo
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
        off = pa.array(offsets, type=pa.int32())
        out = {
            self.spec.timestamp: pa.ListArray.from_arrays(
                off, pa.array(origin_unix + self.log.t[flat], type=pa.int64())
            )
        }
        for f in self.spec.fields:
            values = pa.array(self.log.fields[f.source][flat].astype(np.int64), type=pa.int64())
            out[f.source] = pa.ListArray.from_arrays(off, values)
        return out


def _vectors(x: np.ndarray) -> pa.Array:
    """N x E float32 -> ``fixed_size_list<float32>[E]``."""
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), x.shape[1])


def _table(
    imp: DayImpressions,
    keep: np.ndarray,
    sample_rate: np.ndarray,
    slicers: list[_SequenceSlicer],
    user_offset: int,
    origin_unix: int,
) -> pa.Table:
    keep = np.flatnonzero(keep)
    keep = keep[np.argsort(imp.t[keep], kind="stable")]  # rows in time order, like a log
    user, t = imp.user[keep], imp.t[keep]
    cols: dict[str, pa.Array] = {
        "ts": pa.array(origin_unix + t, type=pa.int64()),
        "user_id": pa.array(user_offset + user, type=pa.int64()),
    }
    for name, values in imp.columns.items():
        v = values[keep]
        cols[name] = _vectors(v) if v.ndim == 2 else pa.array(v)
    for slicer in slicers:
        cols.update(slicer.columns(user, t, origin_unix))
    for head in HEADS:
        cols[head] = pa.array(imp.labels[head][keep], type=pa.int8())
    for head in HEADS:
        cols[f"oracle_{head}"] = pa.array(imp.oracle[head][keep], type=pa.float64())
    cols["sample_rate"] = pa.array(sample_rate[keep], type=pa.float64())
    return pa.table(cols)


def _auc(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    if y.min(initial=1) == y.max(initial=0):
        return None, None
    return float(roc_auc_score(y, p)), float(average_precision_score(y, p))


@dataclass
class _DayAccumulator:
    """Labels and oracle of one day over all chunks (small: 2 numbers per head per row)."""

    labels: list[dict[str, np.ndarray]]
    oracle: list[dict[str, np.ndarray]]
    rows: int = 0
    kept_non_converting: int = 0

    def stats(self, day: str) -> DayStats:
        y = {h: np.concatenate([x[h] for x in self.labels]) for h in HEADS}
        p = {h: np.concatenate([x[h] for x in self.oracle]) for h in HEADS}
        converting = np.zeros(len(y["click"]), dtype=bool)
        for h in CONVERSION_TYPES:
            converting |= y[h] > 0
        aucs = {h: _auc(y[h], p[h]) for h in HEADS}
        return DayStats(
            day=day,
            impressions=len(converting),
            rows=self.rows,
            non_converting=int((~converting).sum()),
            kept_non_converting=self.kept_non_converting,
            positives={h: int(y[h].sum()) for h in HEADS},
            oracle_mean={h: float(p[h].mean()) if len(p[h]) else 0.0 for h in HEADS},
            oracle_roc_auc={h: a[0] for h, a in aucs.items()},
            oracle_pr_auc={h: a[1] for h, a in aucs.items()},
        )


def synthesize(
    out: Path,
    config: WorldConfig,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> WorldSummary:
    """Generate the world and write ``out/dt=YYYY-MM-DD/part-*.parquet``, ``out/_spec.yaml``
    and ``out/_world.json`` (config + per-day truth summary), atomically.

    Users are simulated in chunks of ``config.users_per_chunk`` (one part file per chunk
    and day), so memory is bounded by the chunk, not the world. ``progress`` is called
    with a short message after each chunk-day is written.
    """
    started = time.perf_counter()
    spec: FeatureSpec = world_spec(config)
    catalogue_rng = np.random.default_rng([config.seed, 0])
    cat: Catalogue = build_catalogue(config, catalogue_rng)
    all_users = build_users(config, cat, catalogue_rng)
    n_days = config.history_days + config.days
    span = n_days * DAY
    origin_unix = config.start_unix - config.history_days * DAY
    names = config.day_names
    days = [_DayAccumulator([], []) for _ in names]

    with DatasetWriter(out, overwrite=overwrite) as writer:
        for chunk, lo in enumerate(range(0, config.users, config.users_per_chunk)):
            hi = min(lo + config.users_per_chunk, config.users)
            users = all_users.slice(lo, hi)
            rng = np.random.default_rng([config.seed, 1, chunk])
            interests = simulate_interests(users, n_days, config, rng)
            behaviour = simulate_behaviour(users, interests, cat, config, rng)
            index = BehaviourIndex(behaviour, cat, span)
            logs = behaviour.logs()
            slicers = [_SequenceSlicer(logs[s.name], s, span) for s in spec.sequences]
            snapshots: dict[int, UserSnapshot] = {}
            for d, name in enumerate(names):
                day = config.history_days + d
                ref = max(config.history_days + 7 * (d // 7) - config.embedding_staleness_days, 0)
                if ref not in snapshots:
                    snap_rng = np.random.default_rng([config.seed, 2, chunk, ref])
                    snapshots[ref] = UserSnapshot.at(interests, ref, cat, config, snap_rng)
                imp = draw_day(day, users, interests, index, snapshots[ref], cat, config, rng)
                converting = np.zeros(len(imp), dtype=bool)
                for h in CONVERSION_TYPES:
                    converting |= imp.labels[h] > 0
                keep = converting | (rng.random(len(imp)) < config.negative_rate)
                sample_rate = np.where(converting, 1.0, config.negative_rate)
                writer.write_day(name, _table(imp, keep, sample_rate, slicers, lo, origin_unix))
                acc = days[d]
                acc.labels.append(imp.labels)
                acc.oracle.append({h: v.astype(np.float32) for h, v in imp.oracle.items()})
                acc.rows += int(keep.sum())
                acc.kept_non_converting += int((keep & ~converting).sum())
                if progress is not None:
                    progress(f"users {lo}-{hi - 1}, {name}: {int(keep.sum())} rows")
        summary = WorldSummary(
            config=config,
            origin_unix=origin_unix,
            days=[acc.stats(name) for acc, name in zip(days, names, strict=True)],
            seconds=time.perf_counter() - started,
        )
        writer.write_spec(spec)
        writer.write_text(WORLD_FILE, summary.model_dump_json(indent=2))
    return summary
