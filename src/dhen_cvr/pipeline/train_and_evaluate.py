"""Train, then evaluate on the next day(s): what ``dhen-cvr train --eval-days`` runs.

The evaluation days are resolved and checked *before* training starts (days that do not
exist, or that were also trained on, are refused up front), the model is evaluated in
memory right after training, and the report lands in ``RUN/eval.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dhen_cvr.config import ExperimentConfig
from dhen_cvr.data.spec import load_data_spec
from dhen_cvr.days import day_name, resolve_days
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.eval import EvalReport, evaluate_model
from dhen_cvr.runtime.checkpoint import TrainProgress
from dhen_cvr.runtime.distributed import init_distributed
from dhen_cvr.train import BatchHook, TrainResult, plan_training, run_training
from dhen_cvr.train.run import ResumeMode

__all__ = ["RunResult", "check_eval_days", "train_and_evaluate"]


@dataclass(frozen=True)
class RunResult:
    """A training run and, when evaluation days were given, its next-day report."""

    train: TrainResult
    eval: EvalReport | None

    @property
    def run(self) -> Path:
        return self.train.run

    @property
    def checkpoint(self) -> Path:
        return self.train.checkpoint

    @property
    def progress(self) -> TrainProgress:
        return self.train.progress

    @property
    def examples_per_s(self) -> float:
        return self.train.examples_per_s

    @property
    def train_loss(self) -> float:
        return self.train.train_loss


def check_eval_days(train_days: list[Path], eval_days: list[Path], allow: bool) -> list[str]:
    """The evaluation days that were also trained on; refused unless ``allow``."""
    trained = {p.resolve() for p in train_days}
    overlap = [day_name(p) for p in eval_days if p.resolve() in trained]
    if overlap and not allow:
        raise DhenCvrError(
            f"evaluation day(s) {overlap} are also training days: that measures in-sample, "
            "not next-day, performance; choose later --eval-days or pass "
            "--allow-in-sample-eval"
        )
    return overlap


def train_and_evaluate(
    config: ExperimentConfig | str | Path | None,
    data: str | Path | None,
    train_days: str | list[Path] | None,
    out: str | Path,
    *,
    eval_days: str | list[Path] | None = None,
    init_from: str | Path | None = None,
    resume: ResumeMode = False,
    show_progress: bool = True,
    allow_in_sample_eval: bool = False,
    on_batch: BatchHook | None = None,
    extra_columns: Sequence[str] = (),
    spec: str | Path | None = None,
) -> RunResult:
    """:func:`dhen_cvr.train.train`, then :func:`dhen_cvr.eval.evaluate_model` of the
    trained model on ``eval_days`` (if given). ``eval_days`` that overlap the training
    days are refused (an in-sample AUC is not a next-day AUC) unless
    ``allow_in_sample_eval``; the report then says so in its notes. ``spec``: a feature
    spec kept outside the data folder."""
    plan = plan_training(
        config, data, train_days, out, init_from=init_from, resume=resume, spec=spec
    )
    eval_dirs = None if eval_days is None else resolve_days(plan.data, eval_days)
    overlap = check_eval_days(plan.days, eval_dirs or [], allow_in_sample_eval)
    trained = run_training(
        plan, show_progress=show_progress, on_batch=on_batch, extra_columns=extra_columns
    )
    if eval_dirs is None:
        return RunResult(trained, None)
    ctx = init_distributed(plan.config.train.device)
    report = evaluate_model(
        trained.model,
        load_data_spec(plan.data, plan.spec),
        eval_dirs,
        ctx=ctx,
        batch_size=plan.config.train.eval_batch_size,
        loss=plan.config.loss,
        run=str(plan.run),
    )
    if overlap:
        report.notes["in_sample"] = f"evaluation days {overlap} were also trained on"
    if ctx.is_main:
        path = plan.run / "eval.json"
        try:
            report.save(path)
        except OSError as err:
            raise DhenCvrError(
                f"trained ({trained.checkpoint}) and evaluated, but cannot write {path}: "
                f"{err.strerror or err}; `dhen-cvr evaluate --run {plan.run}` recomputes it"
            ) from err
    return RunResult(trained, report)
