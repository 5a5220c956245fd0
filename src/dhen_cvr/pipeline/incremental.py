"""Batch + incremental training with next-day evaluation (paper 5.1-5.2; DESIGN section 5).

Warm up on days ``1..N`` and evaluate on day ``N+1``; then for each incremental day ``d``:
start from the previous checkpoint, train on day ``d`` only, evaluate on day ``d+1``
(when the data has it). The summary is every next-day evaluation and their average::

    OUT/warmup/            run trained on the warm-up days (eval.json: first next day)
    OUT/day-2026-01-11/    run trained on that day from the previous checkpoint
    OUT/incremental.json   each next-day evaluation and the mean over them
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dhen_cvr.config import ExperimentConfig, load_experiment_config
from dhen_cvr.days import day_name, next_day, resolve_days
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.eval.evaluate import EvalReport, combine_reports
from dhen_cvr.pipeline.train_and_evaluate import RunResult, train_and_evaluate
from dhen_cvr.runtime.distributed import init_distributed
from dhen_cvr.train.run import ResumeMode

__all__ = ["IncrementalResult", "train_incremental"]


@dataclass(frozen=True)
class IncrementalResult:
    """The runs in training order (warm-up first) and the mean next-day evaluation."""

    out: Path
    runs: list[RunResult]
    summary: EvalReport | None

    @property
    def reports(self) -> list[EvalReport]:
        return [r.eval for r in self.runs if r.eval is not None]


def train_incremental(
    config: ExperimentConfig | str | Path,
    data: str | Path,
    warmup_days: str | list[Path],
    incremental_days: str | list[Path],
    out: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    spec: str | Path | None = None,
) -> IncrementalResult:
    """Warm up, then train one day at a time from yesterday's checkpoint, evaluating each
    model on the following day. ``resume`` continues (or re-evaluates) finished steps and
    starts the ones not begun yet."""
    if not isinstance(config, ExperimentConfig):
        config = load_experiment_config(config)
    data, out = Path(data), Path(out)
    warmup, days = resolve_days(data, warmup_days), resolve_days(data, incremental_days)
    if days and day_name(days[0]) <= day_name(warmup[-1]):
        raise DhenCvrError("incremental days must come after the warm-up days")

    def evaluation_day(trained_through: Path) -> list[Path] | None:
        following = next_day(data, trained_through)
        return None if following is None else [following]

    run_resume: ResumeMode = "if-exists" if resume else False  # later days may not be started yet
    runs = [
        train_and_evaluate(
            config,
            data,
            warmup,
            out / "warmup",
            eval_days=evaluation_day(warmup[-1]),
            resume=run_resume,
            show_progress=show_progress,
            spec=spec,
        )
    ]
    for day in days:
        runs.append(
            train_and_evaluate(
                config,
                data,
                [day],
                out / f"day-{day_name(day)}",
                eval_days=evaluation_day(day),
                init_from=runs[-1].checkpoint,
                resume=run_resume,
                show_progress=show_progress,
                spec=spec,
            )
        )
    reports = [r.eval for r in runs if r.eval is not None]
    summary = combine_reports(reports, str(out)) if reports else None
    if summary is not None and init_distributed(config.train.device).is_main:
        runs_info = [
            {"run": str(r.run), "evaluated_on": r.eval.days if r.eval else []} for r in runs
        ]
        text = json.dumps({"runs": runs_info, **summary.to_dict()}, indent=2)
        (out / "incremental.json").write_text(text + "\n")
    return IncrementalResult(out, runs, summary)
