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

Overrides are applied in the order base file, ``set``, the variant, then the caller's.
Baselines take only their own overrides (and ``seed``); they appear in the summary as
rows beside the variants.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dhen_cvr.baseline import load_baseline_config, train_baseline
from dhen_cvr.config import load_experiment_config
from dhen_cvr.errors import DhenCvrError, describe_validation_error
from dhen_cvr.eval.evaluate import EvalReport
from dhen_cvr.pipeline import train_and_evaluate

__all__ = ["StudyConfig", "StudyResult", "load_study", "run_study", "summarize"]

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
) -> StudyResult:
    """Train + evaluate every (variant, seed) not already done, then summarise."""
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
    # Validate every config before the first (long) run, so a typo fails in seconds.
    for variant in study.variants:
        load_experiment_config(
            study.base, study.overrides(variant, study.seeds[0], extra_overrides)
        )
    for name in study.baselines:
        load_baseline_config(None, study.baseline_overrides(name, study.seeds[0]))
    for variant in only or study.names:
        for seed in study.seeds:
            run = out / variant / f"seed{seed}"
            if (run / "eval.json").is_file():
                continue
            if variant in study.baselines:
                print(f"[study] {variant} (baseline) seed {seed} -> {run}", flush=True)
                gbdt = load_baseline_config(None, study.baseline_overrides(variant, seed))
                train_baseline(data, train_days, eval_days, run, gbdt, overwrite=True, spec=spec)
                continue
            config = load_experiment_config(
                study.base, study.overrides(variant, seed, extra_overrides)
            )
            print(f"[study] {variant} seed {seed} -> {run}", flush=True)
            train_and_evaluate(
                config,
                data,
                train_days,
                run,
                eval_days=eval_days,
                resume="if-exists",
                show_progress=show_progress,
                spec=spec,
            )
    return summarize(out, study)


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
    (out / "summary.json").write_text(
        json.dumps(
            {"days": first.days, "heads": heads, "summary": summary, "oracle": oracle},
            indent=2,
            default=lambda x: None,
        )
        + "\n"
    )
    return StudyResult(out, summary, oracle, heads, served, markdown)


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
