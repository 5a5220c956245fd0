"""Run trials, in this process or in ``workers`` parallel processes, through the store.

A config already in ``OUT/trials.jsonl`` is not trained again (that is how a killed
search resumes, and how several strategies share one training of the same config). New
trials train in ``OUT/runs/<key>/``; each finished one is appended to the store by this
(the main) process as soon as it completes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dhen_cvr.runtime import run_in_processes
from dhen_cvr.search.measure import run_trial
from dhen_cvr.search.space import Candidate, SearchSpace
from dhen_cvr.search.store import TrialRecord, TrialStore

__all__ = ["TrialRunner"]


def _trial_in_worker(
    args: tuple[SearchSpace, Candidate, str, str, str, str, list[str]],
) -> TrialRecord:
    space, candidate, data, train_days, eval_days, run, extra = args
    return run_trial(space, candidate, data, train_days, eval_days, run, extra_overrides=extra)


class TrialRunner:
    """Measures candidates once each; ``run`` returns records in the candidates' order."""

    def __init__(
        self,
        space: SearchSpace,
        data: str | Path,
        train_days: str,
        eval_days: str,
        out: str | Path,
        *,
        workers: int = 1,
        extra_overrides: list[str] | None = None,
        log: bool = True,
    ) -> None:
        self.space, self.data = space, str(data)
        self.train_days, self.eval_days = train_days, eval_days
        self.out = Path(out)
        self.store = TrialStore(self.out / "trials.jsonl")
        self.workers = max(1, workers)
        self.extra = list(extra_overrides or [])
        self.log = log
        self.trained = 0  # trainings this process ran (the rest came from the store)

    def _say(self, text: str) -> None:
        if self.log:
            print(f"[search] {text}", flush=True)

    def run(self, candidates: Sequence[Candidate]) -> list[TrialRecord]:
        done = self.store.load()
        pending = list({c.key: c for c in candidates if c.key not in done}.values())
        if len(candidates) > len(pending):
            self._say(f"{len(candidates) - len(pending)} trial(s) already measured, reused")
        args = [(c, str(self.out / "runs" / c.key)) for c in pending]
        if self.workers == 1 or len(pending) <= 1:
            for candidate, run in args:
                record = run_trial(
                    self.space,
                    candidate,
                    self.data,
                    self.train_days,
                    self.eval_days,
                    run,
                    extra_overrides=self.extra,
                )
                self._record(record, done)
        else:
            calls = [
                (self.space, c, self.data, self.train_days, self.eval_days, run, self.extra)
                for c, run in args
            ]
            run_in_processes(_trial_in_worker, calls, self.workers, lambda r: self._record(r, done))
        return [done[c.key] for c in candidates]

    def _record(self, record: TrialRecord, done: dict[str, TrialRecord]) -> None:
        self.store.append(record)
        done[record.key] = record
        self.trained += 1
        self._say(
            f"trial {len(done)} {record.config.label}: ROC-AUC {record.roc_auc:.4f}, "
            f"PR-AUC {record.pr_auc:.4f}, serve {record.serve_examples_per_s:,.0f} ex/s, "
            f"train {record.train_examples_per_s:,.0f} ex/s ({record.wall_s:.1f} s)"
        )
