"""Next-day evaluation of a trained run (paper 5.2; DESIGN section 6).

Per head and per evaluation day, then averaged over days:

- ``roc_auc``, ``pr_auc`` (average precision) and ``log_loss`` on the evaluation day as
  logged, i.e. the down-sampled data, with the model's probabilities on that scale (as
  the paper evaluates);
- ``calibration``: ``Σ p / Σ y`` on the *full* population: the served probabilities
  (corrected for the negative down-sampling of the model's *training* data, as served,
  :mod:`dhen_cvr.eval.calibration`) and every row weighted by ``1 / inclusion_prob`` of the
  evaluated data, which may be sampled at another rate (a full-traffic day: exact);
- ``oracle_roc_auc``/``oracle_pr_auc``: the same metrics of the data's true
  probabilities (``oracle_*`` columns, synthetic data), the ceiling a model can reach;
- with a baseline run: its mean metrics and the relative lift ``(m - m_base) / m_base``.

Heads with ``serve: false`` (the CTR head, paper 2.2) are evaluated and marked. Under
``torchrun`` every rank scores its own shard and the metric accumulators are merged, so
the numbers are exact, not averages of per-rank values.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dhen_cvr.config.loss import LossConfig
from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec, SpecError, load_spec, resolve_spec_path
from dhen_cvr.days import day_name, resolve_days
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.eval.calibration import (
    correct_for_any_label_sampling,
    correct_for_negative_sampling,
    inclusion_weights,
)
from dhen_cvr.eval.metrics import (
    OracleCalibration,
    StreamingBinaryMetrics,
    mean_se,
    relative_lift,
)
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.probabilities import esmm_probabilities
from dhen_cvr.runtime.checkpoint import load_trained_model
from dhen_cvr.runtime.distributed import DistContext, all_gather_objects, init_distributed

__all__ = [
    "METRICS",
    "EvalReport",
    "HeadMetrics",
    "ScoreAccumulator",
    "combine_reports",
    "evaluate",
    "evaluate_model",
    "evaluation_file",
]

METRICS = (
    "roc_auc",
    "pr_auc",
    "log_loss",
    "calibration",
    "calibration_se",
    "calibration_top10",
    "calibration_vs_oracle",
    "calibration_top10_vs_oracle",
    "oracle_roc_auc",
    "oracle_pr_auc",
)
LIFT_METRICS = ("roc_auc", "pr_auc")

HeadMetrics = dict[str, float]  # metric name -> value (plus "count", "positives")


@dataclass
class EvalReport:
    """Metrics per day and head, their mean over days, and the lift vs a baseline.

    per_day: ``{day: {head: {metric: value}}}``; mean: ``{head: {metric: value}}`` (mean
    over days where finite; ``count``/``positives`` summed); baseline_mean/lift: the same
    shape for the baseline run and the relative lift of ``LIFT_METRICS``.
    """

    run: str
    days: list[str]
    heads: list[str]
    served: dict[str, bool]
    negative_rate: float
    per_day: dict[str, dict[str, HeadMetrics]]
    mean: dict[str, HeadMetrics]
    baseline: str | None = None
    baseline_mean: dict[str, HeadMetrics] | None = None
    lift: dict[str, HeadMetrics] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN written as null)."""
        return _nan_to_none(asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        data = json.loads(Path(path).read_text())
        for key in ("per_day", "mean", "baseline_mean", "lift"):
            if data.get(key) is not None:
                data[key] = _none_to_nan(data[key])
        return cls(**data)

    def with_baseline(self, baseline: EvalReport) -> EvalReport:
        """This report plus ``baseline``'s means and the relative lift per head."""
        if baseline.days != self.days:
            raise DhenCvrError(
                f"baseline evaluated on {baseline.days}, this run on {self.days}: "
                "lift needs the same days"
            )
        lift = {
            head: {
                m: relative_lift(self.mean[head][m], baseline.mean[head][m]) for m in LIFT_METRICS
            }
            for head in self.heads
            if head in baseline.mean
        }
        return replace(self, baseline=baseline.run, baseline_mean=baseline.mean, lift=lift)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _none_to_nan(obj: Any) -> Any:
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _none_to_nan(v) for k, v in obj.items()}
    return obj


class ScoreAccumulator:
    """Scores of any model (DHEN, a GBDT baseline, ...) on evaluation days -> :class:`EvalReport`.

    Three populations per ``(head, day)``: the sampled data as logged (ROC-AUC, PR-AUC, log
    loss on sampled-scale probabilities), the full population (served probabilities, rows
    weighted ``weight / inclusion_prob``: calibration) and the oracle. Served probabilities
    use the exact any-keep-label correction when ``any_sampled`` is given
    (:func:`~dhen_cvr.eval.calibration.correct_for_any_label_sampling`), else the per-head
    one. For DDP, gather each rank's object and :meth:`merge` them (exact, not averaged).

    ``served_negative_rate``: the rate ``r`` of the data the scores' model was *trained* on,
    which the served correction undoes (default: ``spec``'s). The evaluated data may be
    sampled at another rate (e.g. a full-traffic day, ``r = 1``); its rows are weighted by
    their own inclusion probabilities either way.
    """

    def __init__(
        self, heads: list[str], spec: FeatureSpec, *, served_negative_rate: float | None = None
    ) -> None:
        self.heads = list(heads)
        self.spec = spec
        self.served_negative_rate = (
            spec.sampling.negative_rate if served_negative_rate is None else served_negative_rate
        )
        self.sampled = StreamingBinaryMetrics()
        self.full = StreamingBinaryMetrics()
        self.oracle = StreamingBinaryMetrics()
        self.versus_oracle = OracleCalibration()

    def add(
        self,
        day: str,
        p_sampled: np.ndarray,
        labels: np.ndarray,
        label_mask: np.ndarray,
        weight: np.ndarray,
        inclusion_prob: np.ndarray,
        *,
        any_sampled: np.ndarray | None = None,
        oracle: np.ndarray | None = None,
    ) -> None:
        """One chunk of rows: ``p_sampled``, ``labels``, ``label_mask`` (and ``oracle``,
        NaN where unknown) are ``B x H``; ``weight``, ``inclusion_prob`` and ``any_sampled``
        (sampled-data probability that any keep label is 1) are ``B``."""
        p = np.asarray(p_sampled, dtype=np.float64)
        heads = self.heads
        self.sampled.update_heads(day, heads, p, labels, label_mask, weight)
        rate = self.served_negative_rate
        if any_sampled is None:
            served = correct_for_negative_sampling(p, rate)
        else:
            a = np.asarray(any_sampled, dtype=np.float64)[:, None]
            served = correct_for_any_label_sampling(p, a, rate)
        full_weight = inclusion_weights(inclusion_prob, weight)
        self.full.update_heads(day, heads, served, labels, label_mask, full_weight)
        if oracle is not None:
            has = ~np.isnan(oracle)
            self.oracle.update_heads(
                day, heads, np.nan_to_num(oracle), labels, label_mask * has, weight
            )
            self.versus_oracle.update_heads(day, heads, served, oracle, label_mask, full_weight)

    def merge(self, other: ScoreAccumulator) -> None:
        self.sampled.merge(other.sampled)
        self.full.merge(other.full)
        self.oracle.merge(other.oracle)
        self.versus_oracle.merge(other.versus_oracle)

    def report(self, days: list[str], run: str) -> EvalReport:
        """Metrics per day and their mean over ``days``."""
        return _report(self, self.heads, self.spec, days, run)


def _probabilities(logits: torch.Tensor, heads: list[str], loss: LossConfig | None) -> torch.Tensor:
    """``B x H`` probabilities on the sampled scale, in the trained formulation."""
    click = loss.esmm_scale_head if loss is not None else None
    if click is not None:
        return esmm_probabilities(logits.float(), heads, click)
    return torch.sigmoid(logits.float())


@torch.no_grad()
def evaluate_model(
    model: CVRModel,
    spec: FeatureSpec,
    days: list[Path],
    *,
    ctx: DistContext | None = None,
    batch_size: int = 2048,
    loss: LossConfig | None = None,
    run: str | Path = "",
) -> EvalReport:
    """Score ``days`` (day folders) with ``model`` and compute the metrics per day.

    ``loss``: the run's loss config (for the ESMM formulation's probabilities).
    Collective under ``torchrun``: every rank must call it."""
    ctx = ctx or init_distributed("cpu")
    heads = list(model.head_names)
    was_training = model.training
    model.eval()
    acc = ScoreAccumulator(heads, spec, served_negative_rate=model.spec.sampling.negative_rate)
    for day in days:
        name = day_name(day)
        stream = ParquetBatchStream(
            [day],
            spec,
            batch_size=batch_size,
            shuffle=False,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        for batch in make_loader(stream):
            batch = batch.to(ctx.device)
            out = model.encode(
                batch.dense, batch.pretrained, batch.categorical, batch.sequences, ssl=False
            )
            keep = out.keep_logit
            acc.add(
                name,
                _probabilities(out.logits, heads, loss).double().cpu().numpy(),
                batch.labels.double().cpu().numpy(),
                batch.label_mask.cpu().numpy(),
                batch.weight.double().cpu().numpy(),
                batch.inclusion_prob.double().cpu().numpy(),
                any_sampled=None if keep is None else torch.sigmoid(keep.double()).cpu().numpy(),
                oracle=None if batch.oracle is None else batch.oracle.double().cpu().numpy(),
            )
    model.train(was_training)
    merged = ScoreAccumulator(heads, spec, served_negative_rate=model.spec.sampling.negative_rate)
    for part in all_gather_objects(ctx, acc):
        merged.merge(part)
    return merged.report([day_name(d) for d in days], str(run))


def _report(
    acc: ScoreAccumulator, heads: list[str], spec: FeatureSpec, days: list[str], run: str
) -> EvalReport:
    sampled, full, oracle = acc.sampled.compute(), acc.full.compute(), acc.oracle.compute()
    versus = acc.versus_oracle.compute()
    per_day: dict[str, dict[str, HeadMetrics]] = {}
    for day in days:
        per_day[day] = {}
        for head in heads:
            s, f, o = sampled.get((head, day)), full.get((head, day)), oracle.get((head, day))
            vs, vs_top = versus.get((head, day), (math.nan, math.nan))
            per_day[day][head] = {
                "roc_auc": s.roc_auc if s else math.nan,
                "pr_auc": s.pr_auc if s else math.nan,
                "log_loss": s.log_loss if s else math.nan,
                "calibration": f.calibration if f else math.nan,
                "calibration_se": f.calibration_se if f else math.nan,
                "calibration_top10": f.calibration_top_decile if f else math.nan,
                "calibration_vs_oracle": vs,
                "calibration_top10_vs_oracle": vs_top,
                "oracle_roc_auc": o.roc_auc if o and o.count else math.nan,
                "oracle_pr_auc": o.pr_auc if o and o.count else math.nan,
                "count": s.count if s else 0,
                "positives": s.positives if s else 0,
            }
    keep = spec.keep_label_names
    rate, data_rate = acc.served_negative_rate, spec.sampling.negative_rate
    trained_at = "" if rate == data_rate else f" (the training data's; these data: {data_rate})"
    report = EvalReport(
        run=run,
        days=days,
        heads=heads,
        served={lb.name: lb.serve for lb in spec.labels},
        negative_rate=rate,
        per_day=per_day,
        mean=_mean_over_days(per_day, heads),
        notes={
            "roc_auc/pr_auc/log_loss": "on the down-sampled evaluation data, sampled-scale p",
            "calibration": "sum(p)/sum(y) on the full population (rows weighted 1/pi), p "
            "corrected for the down-sampling: rows are kept when any of "
            f"{keep} is 1, else at rate {rate}{trained_at}; exact for those "
            "heads, not for the others (e.g. a click head)",
            "calibration_se": "its standard error (the ratio's linearisation over rows: label "
            "noise and down-sampling); the mean over days: sqrt(sum se^2) / days",
            "calibration_top10": "the same, over the 10% of the full population with the "
            "highest predictions (where bids are decided)",
            "calibration_vs_oracle": "sum(p)/sum(oracle p) on the same rows and weights: the "
            "bias without the label noise of sum(y) (synthetic data); also for the top 10%",
        },
    )
    report.notes |= undefined_metric_notes(per_day, heads)
    return report


def _mean_over_days(
    per_day: dict[str, dict[str, HeadMetrics]], heads: list[str]
) -> dict[str, HeadMetrics]:
    """Per head: each metric's mean over the days where it is finite; counts summed."""
    mean: dict[str, HeadMetrics] = {}
    for head in heads:
        rows = [metrics[head] for metrics in per_day.values() if head in metrics]
        mean[head] = {m: _finite_mean([r.get(m, math.nan) for r in rows]) for m in METRICS}
        mean[head]["calibration_se"] = mean_se([r.get("calibration_se", math.nan) for r in rows])
        mean[head]["count"] = sum(r["count"] for r in rows)
        mean[head]["positives"] = sum(r["positives"] for r in rows)
    return mean


def undefined_metric_notes(
    per_day: dict[str, dict[str, HeadMetrics]], heads: list[str]
) -> dict[str, str]:
    """``{"undefined/<head>": why}`` for each head whose ROC-AUC is undefined on some day
    (no labelled rows, no positives or only positives), and what its mean then covers:
    the metric means are over the days where they are defined, the row and positive
    counts add all days."""
    notes: dict[str, str] = {}
    for head in heads:
        days = {day: m[head] for day, m in per_day.items() if head in m}
        reasons = []
        for day, m in days.items():
            if math.isfinite(m["roc_auc"]):
                continue
            if m["count"] == 0:
                reasons.append(f"{day} has no labelled rows")
            elif m["positives"] == 0:
                reasons.append(f"{day} has no positives")
            elif m["positives"] == m["count"]:
                reasons.append(f"{day} has only positives")
            else:
                reasons.append(f"{day} is undefined")
        if not reasons:
            continue
        text = f"{head}: ROC-AUC/PR-AUC cannot be computed ('-'): {'; '.join(reasons)}"
        defined = len(days) - len(reasons)
        if len(days) > 1:
            text += (
                f"; its metric means are over the {defined} other day(s) of {len(days)}, "
                "while rows and positives add all days"
                if defined
                else "; undefined on every day"
            )
        notes[f"undefined/{head}"] = text
    return notes


def combine_reports(reports: list[EvalReport], run: str) -> EvalReport:
    """One report over the days of several (e.g. each incremental day's next-day
    evaluation, paper 5.2); the days must be distinct."""
    if not reports:
        raise ValueError("combine_reports needs at least one report")
    days = [d for r in reports for d in r.days]
    if len(set(days)) != len(days):
        raise ValueError(f"reports share evaluation days: {days}")
    per_day = {d: m for r in reports for d, m in r.per_day.items()}
    first = reports[0]
    notes = {k: v for k, v in first.notes.items() if not k.startswith("undefined/")}
    notes |= undefined_metric_notes(per_day, first.heads)
    return replace(
        first,
        run=run,
        days=days,
        per_day=per_day,
        mean=_mean_over_days(per_day, first.heads),
        notes=notes,
    )


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate(
    run: str | Path,
    data: str | Path,
    days: str | list[Path],
    *,
    baseline: str | Path | None = None,
    batch_size: int | None = None,
    save: bool = True,
    spec: str | Path | None = None,
) -> EvalReport:
    """Evaluate the newest checkpoint of ``run`` (or a checkpoint folder) on ``days`` of
    ``data``; with ``baseline`` (another run) add its metrics and the relative lift.
    Writes :func:`evaluation_file` (``RUN/eval-<days>.json``; the training-time
    ``RUN/eval.json`` is left as it is) when ``run`` is a run folder and ``save`` is set. ``spec``:
    the data's feature spec when it is kept outside the data folder."""
    data = Path(data)
    day_dirs = resolve_days(data, days)
    ctx = init_distributed("auto")
    reports = []
    for path in [run] if baseline is None else [run, baseline]:
        trained = load_trained_model(path, ctx.device)
        data_spec = _data_spec(data, trained.spec, spec)
        reports.append(
            evaluate_model(
                trained.model,
                data_spec,
                day_dirs,
                ctx=ctx,
                batch_size=batch_size or trained.config.train.eval_batch_size,
                loss=trained.config.loss,
                run=str(path),
            )
        )
    report = reports[0] if baseline is None else reports[0].with_baseline(reports[1])
    if save and ctx.is_main and (Path(run) / "run.json").is_file():  # a run folder
        report.save(evaluation_file(run, report.days))
    return report


def evaluation_file(run: str | Path, days: list[str]) -> Path:
    """Where ``evaluate`` saves a run's report on ``days``: ``RUN/eval-<day>.json`` or
    ``RUN/eval-<first>..<last>.json`` (an evaluation of the same days replaces it)."""
    name = days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
    return Path(run) / f"eval-{name}.json"


def _data_spec(data: Path, model_spec: FeatureSpec, given: str | Path | None) -> FeatureSpec:
    """The data's own spec (``given``, else the data folder's: its sampling rate, oracle
    columns), checked against the model's; the model's spec when there is none."""
    try:
        path = resolve_spec_path(data, given)
    except SpecError:
        if given is not None:
            raise
        return model_spec
    spec = load_spec(path)
    if spec.embedding_tables() != model_spec.embedding_tables() or [
        lb.name for lb in spec.labels
    ] != [lb.name for lb in model_spec.labels]:
        raise DhenCvrError(
            f"{path} does not match the model's spec (different embedding tables or heads)"
        )
    return spec
