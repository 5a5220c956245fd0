"""The data-quality report of a preparation run (``_quality.json`` + ``_quality.txt``).

It answers "what happened to my rows": rows read, rows dropped per reason (each dropped
row is counted under exactly one reason), examples written, label rates (and rates
inside each head's mask), sequence length percentiles, and the time range of every
output day. Everything is accumulated while streaming, in O(days + sum of max_len)
memory.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dhen_cvr.data.warning import warn
from dhen_cvr.data.writer import DatasetWriter

__all__ = ["DayStats", "QualityReport"]

_PERCENTILES = (50, 90, 99)


@dataclass
class DayStats:
    """Examples of one output day and their request-time range (unix seconds)."""

    examples: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    positives: dict[str, int] = field(default_factory=dict)


class QualityReport:
    """Accumulates the quality numbers of one run; ``to_dict`` / ``to_text`` render it.

    ``labels`` maps each head to its mask column (None = no mask); ``sequences`` maps
    each sequence name to (its ``*_ts`` column, ``max_len``).
    """

    def __init__(
        self,
        command: str,
        sources: list[str],
        *,
        labels: dict[str, str | None],
        drop_reasons: tuple[str, ...] = (),
        sequences: dict[str, tuple[str, int]] | None = None,
        timezone: dt.tzinfo = dt.timezone.utc,
    ) -> None:
        self.command = command
        self.sources = sources
        self.labels = labels
        self.sequences = sequences or {}
        self.timezone = timezone
        self.rows_read = 0
        self.dropped: dict[str, int] = dict.fromkeys(drop_reasons, 0)
        self.counters: dict[str, int] = {}
        self.examples = 0
        self.positives: dict[str, int] = dict.fromkeys(labels, 0)
        self.mask_rows: dict[str, int] = {n: 0 for n, m in labels.items() if m}
        self.mask_positives: dict[str, int] = {n: 0 for n, m in labels.items() if m}
        self.days: dict[str, DayStats] = {}
        self.length_hist: dict[str, np.ndarray] = {
            name: np.zeros(max_len + 1, dtype=np.int64)
            for name, (_, max_len) in self.sequences.items()
        }
        self.id_stats: dict[str, dict[str, int]] = {}
        self.warnings: list[str] = []

    # ---- accumulation ------------------------------------------------------------
    def drop(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    def count(self, name: str, value: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + int(value)

    def add_examples(self, day: str, table: pa.Table, ts_column: str = "ts") -> None:
        """Account for rows about to be written to ``day``."""
        n = table.num_rows
        if n == 0:
            return
        self.examples += n
        stats = self.days.setdefault(day, DayStats(positives=dict.fromkeys(self.labels, 0)))
        stats.examples += n
        lo, hi = pc.min_max(table[ts_column]).values()
        stats.min_ts = lo.as_py() if stats.min_ts is None else min(stats.min_ts, lo.as_py())
        stats.max_ts = hi.as_py() if stats.max_ts is None else max(stats.max_ts, hi.as_py())
        for name, mask in self.labels.items():
            y = table[name].to_numpy().astype(bool)
            pos = int(y.sum())
            self.positives[name] += pos
            stats.positives[name] += pos
            if mask:
                m = table[mask].to_numpy().astype(bool)
                self.mask_rows[name] += int(m.sum())
                self.mask_positives[name] += int((y & m).sum())
        for name, (ts_col, max_len) in self.sequences.items():
            lengths = pc.list_value_length(table[ts_col]).to_numpy(zero_copy_only=False)
            self.length_hist[name] += np.bincount(lengths, minlength=max_len + 1)[: max_len + 1]

    def warn(self, message: str) -> None:
        """Record a warning (kept in ``_quality.json``) and emit it as a DataWarning."""
        self.warnings.append(message)
        warn(message)

    def check_labels(self) -> None:
        """Warn about heads without a single positive example (they cannot learn)."""
        for name, count in self.positives.items():
            if count == 0 and self.examples:
                self.warn(
                    f"label {name!r} has no positive example in {self.examples:,} examples: "
                    "that head cannot learn; check its events/condition and window"
                )

    def time_span(self) -> tuple[int, int] | None:
        """(first, last) request time over all days, unix seconds; None without rows."""
        lows = [s.min_ts for s in self.days.values() if s.min_ts is not None]
        highs = [s.max_ts for s in self.days.values() if s.max_ts is not None]
        return (min(lows), max(highs)) if lows and highs else None

    # ---- rendering -----------------------------------------------------------------
    def _time(self, ts: int | None) -> str | None:
        if ts is None:
            return None
        return dt.datetime.fromtimestamp(ts, self.timezone).isoformat()

    def _sequence_stats(self, name: str) -> dict[str, float]:
        hist = self.length_hist[name]
        total = int(hist.sum())
        if total == 0:
            return {"rows": 0}
        cum = np.cumsum(hist)
        out: dict[str, float] = {"rows": total}
        for p in _PERCENTILES:
            out[f"p{p}"] = int(np.searchsorted(cum, np.ceil(p / 100 * total)))
        lengths = np.arange(len(hist))
        out["max"] = int(lengths[hist > 0].max())
        out["mean"] = round(float((hist * lengths).sum() / total), 3)
        out["empty_fraction"] = round(float(hist[0] / total), 4)
        return out

    def to_dict(self) -> dict[str, Any]:
        labels: dict[str, Any] = {}
        for name, mask in self.labels.items():
            entry: dict[str, Any] = {
                "positives": self.positives[name],
                "rate": self.positives[name] / self.examples if self.examples else None,
            }
            if mask:
                rows = self.mask_rows[name]
                entry.update(
                    mask=mask,
                    mask_rows=rows,
                    rate_in_mask=self.mask_positives[name] / rows if rows else None,
                )
            labels[name] = entry
        return {
            "command": self.command,
            "sources": self.sources,
            "rows_read": self.rows_read,
            "rows_dropped": dict(self.dropped),
            "rows_dropped_total": sum(self.dropped.values()),
            "examples": self.examples,
            "counters": dict(self.counters),
            "warnings": list(self.warnings),
            "labels": labels,
            "sequences": {name: self._sequence_stats(name) for name in self.sequences},
            "ids": self.id_stats,
            "days": {
                day: {
                    "examples": s.examples,
                    "first_request": self._time(s.min_ts),
                    "last_request": self._time(s.max_ts),
                    "positives": s.positives,
                }
                for day, s in sorted(self.days.items())
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        d = self.to_dict()
        lines = [
            f"{self.command}: {d['rows_read']:,} rows read from {len(self.sources)} file(s)",
        ]
        if self.dropped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in self.dropped.items())
            lines.append(f"  dropped {d['rows_dropped_total']:,} row(s): {reasons}")
        extra = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.counters.items())
        lines.append(f"  examples written {self.examples:,}" + (f" ({extra})" if extra else ""))
        for name, lab in d["labels"].items():
            rate = "n/a" if lab["rate"] is None else f"{100 * lab['rate']:.2f}%"
            text = f"  label {name}: {lab['positives']:,} positive ({rate})"
            if "mask" in lab:
                inner = (
                    "n/a" if lab["rate_in_mask"] is None else f"{100 * lab['rate_in_mask']:.2f}%"
                )
                text += f"; {inner} of {lab['mask_rows']:,} rows with {lab['mask']}=1"
            lines.append(text)
        for name, s in d["sequences"].items():
            if not s["rows"]:
                continue
            lines.append(
                f"  sequence {name}: length p50 {s['p50']} p90 {s['p90']} p99 {s['p99']} "
                f"max {s['max']} mean {s['mean']}, {100 * s['empty_fraction']:.1f}% empty"
            )
        if self.id_stats:
            ids = ", ".join(
                f"{name} {s['distinct']:,}->{s['buckets']:,}" for name, s in self.id_stats.items()
            )
            lines.append(f"  ids (distinct -> hash buckets): {ids}")
        for day, s in d["days"].items():
            lines.append(
                f"  day {day}: {s['examples']:,} examples, {s['first_request']} .. {s['last_request']}"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def save(self, writer: DatasetWriter) -> None:
        """Write ``_quality.json`` and ``_quality.txt`` into the data set being written."""
        writer.write_text("_quality.json", self.to_json() + "\n")  # _: Parquet readers skip it
        writer.write_text("_quality.txt", self.to_text() + "\n")
