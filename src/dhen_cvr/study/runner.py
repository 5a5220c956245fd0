"""Run a study: every variant x seed is one ordinary :func:`dhen_cvr.train.trainer.train`
run folder (``OUT/<variant>/seed<k>``) with ``eval.json``; finished runs are reused, so
an interrupted study continues where it stopped. The summary is the mean and sample
standard deviation over seeds of each head's next-day ROC-AUC and PR-AUC, with the
oracle (the data's true probabilities) beside them.

Study file::

    base: tiny                      # a config path or preset name
    seeds: [0, 1, 2]
    set: {train.epochs: 2}          # overrides for every variant
    variants:
      dhen+ssl: {}
      dhen: {loss.ssl.objective: none}
      mlp: {model.dhen.layers: [...], loss.ssl.objective: none}
    baselines:                      # GBDT yardsticks (dhen_cvr.baseline), same days/seeds
      gbdt: {}                      # overrides of BaselineConfig, e.g. {gbdt.num_trees: 800}
    # optional: the headline table and plot (dhen_cvr.study.report / .plot)
    title: "Figure 5: single modules vs DHEN"
    baseline: mlp                   # the variant every lift is measured against
    lift_metric: roc_auc            # or pr_auc (paper Table 3)
    paper: {dhen: 0.31}             # the paper's lift in % per variant (null: not given)
    paper_note: "..."               # what the paper says, in words

With ``baseline:`` set, the summary adds ``report.md`` (lift table with the paper's number,
GBDT and oracle rows) and ``lift.png``.

Overrides are applied in the order base file, ``set``, the variant, then the caller's.
Baselines take only their own overrides (and ``seed``); they appear in the summary as
rows beside the variants.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dhen_cvr.baseline import BaselineConfig, load_baseline_config, train_baseline
from dhen_cvr.config import load_experiment_config
from dhen_cvr.days import day_name, select_days
from dhen_cvr.errors import DhenCvrError, describe_validation_error
from dhen_cvr.eval.evaluate import EvalReport
from dhen_cvr.pipeline import train_and_evaluate
from dhen_cvr.runtime import read_run_folder, run_in_processes
from dhen_cvr.study.plot import plot_lift
from dhen_cvr.study.report import lift_markdown, lift_rows, load_reports

__all__ = [
    "StudyConfig",
    "StudyResult",
    "copy_report",
    "load_study",
    "parse_seeds",
    "run_study",
    "summarize",
]

REPORT_FILES = ("report.md", "lift.png", "summary.md", "summary.json", "study.json")

SUMMARY_METRICS = (
    "roc_auc",
    "pr_auc",
    "calibration",
    "calibration_vs_oracle",
    "calibration_top10_vs_oracle",
)
_TITLES = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "calibration": "Calibration sum(p)/sum(y), full population",
    "calibration_vs_oracle": "Calibration vs the oracle, sum(p)/sum(oracle p)",
    "calibration_top10_vs_oracle": "The same in the top decile of predictions",
}


class StudyConfig(BaseModel):
    """A list of configs: ``base`` plus each variant's overrides, trained per seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    title: str | None = None
    baseline: str | None = None
    lift_metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    paper: dict[str, float | None] = Field(default_factory=dict)
    paper_note: str | None = None

    @model_validator(mode="after")
    def _known_names(self) -> StudyConfig:
        if self.baseline is not None and self.baseline not in self.variants:
            raise ValueError(
                f"baseline {self.baseline!r} is not one of the variants {list(self.variants)}"
            )
        unknown = sorted(set(self.paper) - set(self.variants))
        if unknown:
            raise ValueError(
                f"paper names unknown variants {unknown}; known: {list(self.variants)}"
            )
        return self

    @property
    def names(self) -> list[str]:
        """Variants, then baselines (the rows of the summary)."""
        return [*self.variants, *self.baselines]

    def baseline_overrides(self, name: str, seed: int) -> list[str]:
        items = {**self.baselines[name], "seed": seed}
        return [f"{key}={json.dumps(value)}" for key, value in items.items()]

    def overrides(self, variant: str, seed: int, extra: list[str] | None = None) -> list[str]:
        """``key=value`` strings for one run (values as JSON, which is valid YAML)."""
        items = {**self.set, **self.variants[variant]}
        texts = [f"{key}={json.dumps(value)}" for key, value in items.items()]
        return [*texts, f"train.seed={seed}", *(extra or [])]


def parse_seeds(text: str) -> list[int]:
    """``'0-4'`` -> ``[0, 1, 2, 3, 4]``; ``'0,3,7-8'`` -> ``[0, 3, 7, 8]`` (in order, no
    repeats). Raises :class:`DhenCvrError` on anything else."""
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last if sep else first)
        except ValueError:
            lo, hi = -1, -2
        if lo < 0 or hi < lo:
            raise DhenCvrError(
                f"--seeds: expected non-negative integers or ranges such as '0-4' or '0,3,7-8',"
                f" got {text!r}"
            )
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    return seeds


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise DhenCvrError(f"study file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
        study = StudyConfig.model_validate(data)
    except yaml.YAMLError as err:
        raise DhenCvrError(f"study {path} is not valid YAML: {err}") from None
    except ValidationError as err:
        raise DhenCvrError(describe_validation_error(f"invalid study {path}:", err)) from None
    base = Path(study.base)
    if not base.is_absolute() and (path.parent / base).is_file():
        study = study.model_copy(update={"base": str(path.parent / base)})
    return study


@dataclass(frozen=True)
class StudyResult:
    """``summary[variant][head][metric]`` = (mean, std, n); ``oracle[head][metric]``."""

    out: Path
    summary: dict[str, dict[str, dict[str, tuple[float, float, int]]]]
    oracle: dict[str, dict[str, float]]
    heads: list[str]
    served: dict[str, bool]
    markdown: str


def run_study(
    study: StudyConfig,
    data: str | Path,
    train_days: str,
    eval_days: str,
    out: str | Path,
    *,
    extra_overrides: list[str] | None = None,
    only: list[str] | None = None,
    show_progress: bool = True,
    spec: str | Path | None = None,
    workers: int = 1,
) -> StudyResult:
    """Train + evaluate every (variant, seed) not already done, then summarise.

    ``workers > 1`` runs that many (variant, seed) runs at once, each in its own process
    with ``train.threads`` = cores / ``workers`` unless the overrides set it (results are
    those of ``workers=1`` with the same threads: every run is seeded and independent)."""
    if workers < 1:
        raise DhenCvrError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only or []) - set(study.names))
    if unknown:
        raise DhenCvrError(f"--only names unknown variants {unknown}; known: {study.names}")
    clash = sorted(set(study.variants) & set(study.baselines))
    if clash:
        raise DhenCvrError(f"study names {clash} are both a variant and a baseline")
    (out / "study.json").write_text(
        json.dumps(
            {
                **study.model_dump(),
                "data": str(data),
                "spec": None if spec is None else str(spec),
                "train_days": train_days,
                "eval_days": eval_days,
                "extra_overrides": extra_overrides or [],
            },
            indent=2,
        )
        + "\n"
    )
    # Validate the days and every config before the first (long) run, so a typo fails in
    # seconds, not in a worker process after the first run has started.
    for selection in (train_days, eval_days):
        select_days(data, selection)
    for variant in study.variants:
        load_experiment_config(
            study.base, study.overrides(variant, study.seeds[0], extra_overrides)
        )
    for name in study.baselines:
        load_baseline_config(None, study.baseline_overrides(name, study.seeds[0]))
    planned = [
        _RunJob(
            study,
            variant,
            seed,
            out / variant / f"seed{seed}",
            str(data),
            train_days,
            eval_days,
            list(extra_overrides or []),
            spec,
            show_progress and workers == 1,
        )
        for variant in only or study.names
        for seed in study.seeds
    ]
    jobs_to_run = [job for job in planned if not _finished(job)]
    if workers == 1 or len(jobs_to_run) <= 1:
        for job in jobs_to_run:
            _run_one(job)
    else:
        _run_parallel(jobs_to_run, workers)
    return summarize(out, study)


@dataclass(frozen=True)
class _RunJob:
    """One (variant, seed) run of a study: everything a worker process needs."""

    study: StudyConfig
    variant: str
    seed: int
    run: Path
    data: str
    train_days: str
    eval_days: str
    extra_overrides: list[str]
    spec: str | Path | None
    show_progress: bool


def _finished(job: _RunJob) -> bool:
    """Whether ``job.run`` holds a finished run of this very job (reused as it is). A
    finished run of another config or other days is an error, not silently reused."""
    if not (job.run / "eval.json").is_file():
        return False
    if job.variant in job.study.baselines:
        stored = json.loads((job.run / "run.json").read_text())
        try:
            stored_config = BaselineConfig.model_validate(stored.get("config", {})).to_dict()
        except ValidationError:
            stored_config = stored.get("config", {})
        wanted = load_baseline_config(
            None, job.study.baseline_overrides(job.variant, job.seed)
        ).to_dict()
        stored_train = stored.get("train_days")
    else:
        info = read_run_folder(job.run)
        if info is None:
            raise DhenCvrError(f"{job.run} has an eval.json but no run folder files")
        wanted = load_experiment_config(
            job.study.base, job.study.overrides(job.variant, job.seed, job.extra_overrides)
        ).to_dict()
        stored_config, stored_train = info.config.to_dict(), info.train_days
    # CPU threads change how fast a run learns, not what: reused across them.
    difference = _first_difference(_without_threads(stored_config), _without_threads(wanted))
    if difference is not None:
        key, was, now = difference
        raise DhenCvrError(
            f"{job.run} holds a finished run of another config ({key}: {was!r} there, "
            f"{now!r} in this study); delete it or choose another --out"
        )
    days = {
        "training": (stored_train, [day_name(d) for d in select_days(job.data, job.train_days)]),
        "evaluation": (
            EvalReport.load(job.run / "eval.json").days,
            [day_name(d) for d in select_days(job.data, job.eval_days)],
        ),
    }
    for what, (was_days, now_days) in days.items():
        if list(was_days or []) != now_days:
            raise DhenCvrError(
                f"{job.run} holds a finished run on other {what} days ({was_days} there, "
                f"{now_days} in this study); delete it or choose another --out"
            )
    return True


def _without_threads(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (an experiment's or a baseline's) without its CPU thread count."""
    out = {k: v for k, v in config.items() if k != "threads"}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k != "threads"}
    return out


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """``(dotted key, a's value, b's value)`` of the first place ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    return None if a == b else (path or "(top level)", a, b)


def _run_one(job: _RunJob) -> None:
    """Train + evaluate one run (a baseline, or a variant through the pipeline)."""
    study, variant, seed = job.study, job.variant, job.seed
    if variant in study.baselines:
        print(f"[study] {variant} (baseline) seed {seed} -> {job.run}", flush=True)
        gbdt = load_baseline_config(None, study.baseline_overrides(variant, seed))
        train_baseline(
            job.data, job.train_days, job.eval_days, job.run, gbdt, overwrite=True, spec=job.spec
        )
        return
    config = load_experiment_config(study.base, study.overrides(variant, seed, job.extra_overrides))
    print(f"[study] {variant} seed {seed} -> {job.run}", flush=True)
    train_and_evaluate(
        config,
        job.data,
        job.train_days,
        job.run,
        eval_days=job.eval_days,
        resume="if-exists",
        show_progress=job.show_progress,
        spec=job.spec,
    )


def _run_parallel(jobs_to_run: list[_RunJob], workers: int) -> None:
    """Run ``jobs_to_run`` in ``workers`` processes, ``train.threads`` = cores / workers
    unless the study or the caller sets it."""
    first = jobs_to_run[0]
    if not any(
        key == "train.threads"
        for key in [*first.study.set, *(o.split("=", 1)[0] for o in first.extra_overrides)]
    ):
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs_to_run = [
            replace(j, extra_overrides=[f"train.threads={threads}", *j.extra_overrides])
            for j in jobs_to_run
        ]
    run_in_processes(_run_one, jobs_to_run, workers)


def summarize(out: str | Path, study: StudyConfig) -> StudyResult:
    """Read every finished ``eval.json`` under ``out``; write ``summary.json`` / ``.md``."""
    out = Path(out)
    reports: dict[str, list[EvalReport]] = {}
    for variant in study.names:
        for seed in study.seeds:
            path = out / variant / f"seed{seed}" / "eval.json"
            if path.is_file():
                reports.setdefault(variant, []).append(EvalReport.load(path))
    if not reports:
        raise DhenCvrError(f"no finished runs under {out}")
    first = next(iter(reports.values()))[0]
    heads, served = first.heads, first.served
    summary = {
        variant: {
            head: {
                m: _mean_std([r.mean[head].get(m, math.nan) for r in runs]) for m in SUMMARY_METRICS
            }
            for head in heads
        }
        for variant, runs in reports.items()
    }
    oracle = {
        head: {m: first.mean[head].get(f"oracle_{m}", math.nan) for m in SUMMARY_METRICS}
        for head in heads
    }
    markdown = _markdown(summary, oracle, heads, served, first.days)
    (out / "summary.md").write_text(markdown + "\n")
    if study.baseline is not None:
        headline = _headline(out, study, first.days)
        markdown = headline + "\n\n" + markdown
    (out / "summary.json").write_text(
        json.dumps(
            {"days": first.days, "heads": heads, "summary": summary, "oracle": oracle},
            indent=2,
            default=lambda x: None,
        )
        + "\n"
    )
    return StudyResult(out, summary, oracle, heads, served, markdown)


def copy_report(out: str | Path, dest: str | Path) -> Path:
    """Copy a study's report files (not its run folders) to ``dest`` (e.g. reports/<study>)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (Path(out) / name).is_file():
            shutil.copyfile(Path(out) / name, dest / name)
    return dest


def _headline(out: Path, study: StudyConfig, days: list[str]) -> str:
    """``report.md`` and ``lift.png``: lift vs the declared baseline, the paper beside."""
    assert study.baseline is not None
    rows = lift_rows(
        load_reports(out, study.names, study.seeds),
        study.baseline,
        study.lift_metric,
        gbdt=list(study.baselines),
        paper=study.paper,
    )
    text = lift_markdown(
        rows,
        study.baseline,
        study.lift_metric,
        days,
        study.seeds,
        title=study.title,
        paper_note=study.paper_note,
    )
    (out / "report.md").write_text(text + "\n")
    plot_lift(out / "lift.png", rows, study.baseline, study.lift_metric, study.title)
    return text


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan, 0)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return (statistics.fmean(finite), std, len(finite))


def _markdown(
    summary: dict[str, dict[str, dict[str, tuple[float, float, int]]]],
    oracle: dict[str, dict[str, float]],
    heads: list[str],
    served: dict[str, bool],
    days: list[str],
) -> str:
    lines = []
    for metric in SUMMARY_METRICS:
        title = _TITLES[metric]
        names = [h if served.get(h, True) else f"{h} (not served)" for h in heads]
        lines.append(f"{title}, next day ({', '.join(days)}): mean ± std over seeds (n)\n")
        lines.append("| variant | " + " | ".join(names) + " | mean of served |")
        lines.append("|---" * (len(heads) + 2) + "|")
        for variant, per_head in summary.items():
            cells = [_cell(per_head[h][metric]) for h in heads]
            served_means = [per_head[h][metric][0] for h in heads if served.get(h, True)]
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {_mean(served_means):.4f} |")
        if metric in ("roc_auc", "pr_auc"):
            oracle_cells = [f"{oracle[h][metric]:.4f}" for h in heads]
            served_oracle = [oracle[h][metric] for h in heads if served.get(h, True)]
            mean_oracle = _mean(served_oracle)
            lines.append("| oracle | " + " | ".join(oracle_cells) + f" | {mean_oracle:.4f} |")
        lines.append("")
    return "\n".join(lines)


def _cell(stat: tuple[float, float, int]) -> str:
    mean, std, n = stat
    return "n/a" if n == 0 else f"{mean:.4f} ± {std:.4f} ({n})"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan
