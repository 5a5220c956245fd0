"""Measured trials, one JSON line each (``OUT/trials.jsonl``), so a search resumes.

A line is written, flushed and fsync'd only after its trial finished; a process killed
mid-write leaves at most one torn last line, which :meth:`TrialStore.load` skips (and the
trial is simply run again). Only the search's main process writes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dhen_cvr.search.space import Candidate

__all__ = ["TrialRecord", "TrialStore"]


@dataclass(frozen=True)
class TrialRecord:
    """One trained and measured config.

    roc_auc / pr_auc: next-day means over the served heads; train/serve_examples_per_s:
    the fixed-batch throughputs (:mod:`dhen_cvr.search.measure`); loop_examples_per_s:
    the training loop's own rate (data reading included); per_head: ROC-AUC per head."""

    key: str
    candidate: dict[str, Any]
    roc_auc: float
    pr_auc: float
    train_examples_per_s: float
    serve_examples_per_s: float
    loop_examples_per_s: float
    wall_s: float
    per_head: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> Candidate:
        return Candidate.model_validate(self.candidate)

    def objective(self, throughput: str = "serve") -> tuple[float, float]:
        """(AUC, examples/s), both to maximise."""
        eps = self.serve_examples_per_s if throughput == "serve" else self.train_examples_per_s
        return (self.roc_auc, eps)

    def to_json(self) -> str:
        data = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        data = json.loads(text)
        for k in ("roc_auc", "pr_auc"):
            data[k] = math.nan if data.get(k) is None else data[k]
        return cls(**data)


class TrialStore:
    """Append-only JSONL of :class:`TrialRecord`, keyed by the candidate's key."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, TrialRecord]:
        """Every complete record (a torn last line from a kill is skipped)."""
        records: dict[str, TrialRecord] = {}
        if not self.path.is_file():
            return records
        for line in self.path.read_text().splitlines():
            try:
                record = TrialRecord.from_json(line)
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
            records[record.key] = record
        return records

    def append(self, record: TrialRecord) -> None:
        text = record.to_json() + "\n"
        # A torn line (no newline) left by a killed writer must not swallow this one.
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
