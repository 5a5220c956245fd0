"""Training a run folder, top to bottom (DESIGN section 5):

1. :func:`plan_training` picks the start: a fresh model, ``init_from`` a checkpoint (warm
   start: weights and dense statistics, a new optimiser), or ``resume`` (everything,
   continuing mid-epoch), and checks that the checkpoint fits the config and spec;
2. :func:`run_training` joins the ``torchrun`` job if there is one, writes the run folder,
   fits the min-max statistics on the training days (fresh runs only), trains
   (:class:`~dhen_cvr.train.trainer.Trainer`) and refits the head intercepts.

:func:`train` is the two in one call. Evaluating afterwards is the pipeline's job
(:func:`dhen_cvr.pipeline.train_and_evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from dhen_cvr.config import ExperimentConfig, load_experiment_config
from dhen_cvr.data.spec import FeatureSpec, load_data_spec
from dhen_cvr.data.stats import MinMaxStats, fit_minmax_stats
from dhen_cvr.days import day_name, resolve_days, select_days
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.runtime.checkpoint import Checkpoint, load_checkpoint
from dhen_cvr.runtime.distributed import barrier, init_distributed
from dhen_cvr.runtime.run_folder import (
    RUN_FILE,
    RunInfo,
    check_new_run_folder,
    clear_failed_start,
    is_failed_start,
    read_run_folder,
    write_run_folder,
)
from dhen_cvr.train.attribute_shares import fit_attribute_shares
from dhen_cvr.train.data_notes import report_data_notes
from dhen_cvr.train.recalibrate import recalibrate_heads
from dhen_cvr.train.trainer import BatchHook, Trainer, TrainResult

__all__ = ["ResumeMode", "TrainingPlan", "plan_training", "run_training", "train"]

ResumeMode = bool | Literal["if-exists"]
"""``True``: continue the run in ``out`` (an error if there is none); ``"if-exists"``:
continue it if it was started, else start it (for schedulers); ``False``: a new run."""


@dataclass(frozen=True)
class TrainingPlan:
    """Where a run starts: its folder, config, data, days, and a checkpoint to load
    (restored in full when resuming, weights only for a warm start), and whether the run
    folder is new. ``spec``: a feature spec outside the data folder (``--spec``)."""

    run: Path
    config: ExperimentConfig
    data: Path
    days: list[Path]
    checkpoint: Checkpoint | None
    new_run: bool
    warm_start: bool = True
    spec: Path | None = None


def plan_training(
    config: ExperimentConfig | str | Path | None,
    data: str | Path | None,
    train_days: str | list[Path] | None,
    out: str | Path,
    *,
    init_from: str | Path | None = None,
    resume: ResumeMode = False,
    spec: str | Path | None = None,
) -> TrainingPlan:
    """Resolve what :func:`train` would do, reading nothing but configs, day folders and
    checkpoints (arguments as for :func:`train`)."""
    run = Path(out)
    plan = _resume_plan(run, config, data, train_days, init_from) if resume else None
    if plan is None:
        if resume is True:
            raise DhenCvrError(
                f"cannot resume {run}: no run was started there (no {run / RUN_FILE}); "
                "drop --resume to start a new run"
            )
        if config is None or data is None or train_days is None:
            raise DhenCvrError("train needs a config, a data folder and training days")
        config = config if isinstance(config, ExperimentConfig) else load_experiment_config(config)
        data_path = Path(data)
        plan = TrainingPlan(run, config, data_path, resolve_days(data_path, train_days), None, True)
        if init_from is not None:
            plan = replace(plan, checkpoint=load_checkpoint(init_from))
    return plan if spec is None else replace(plan, spec=Path(spec))


def run_training(
    plan: TrainingPlan,
    *,
    show_progress: bool = True,
    on_batch: BatchHook | None = None,
    extra_columns: Sequence[str] = (),
) -> TrainResult:
    """Train ``plan`` to the end of its epochs; ``on_batch`` / ``extra_columns`` as in
    :meth:`Trainer.fit`."""
    config, run = plan.config, plan.run
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    ctx = init_distributed(config.train.device)
    spec = load_data_spec(plan.data, plan.spec)
    if plan.checkpoint is not None:
        _check_compatible(plan.checkpoint, config, spec)
    if plan.new_run:
        restart = check_new_run_folder(run)  # on every rank, so a refusal stops them all
        barrier(ctx)  # ... before rank 0 creates it
        if ctx.is_main:
            if restart:
                clear_failed_start(run)
            warm_from = None if plan.checkpoint is None else plan.checkpoint.path
            days = [day_name(d) for d in plan.days]
            write_run_folder(run, RunInfo(config, plan.data, days, warm_from, plan.spec))
    if ctx.is_main:
        report_data_notes(run, spec, config, plan.days)  # cuts and defaults, said out loud
    if plan.checkpoint is not None:
        stats = MinMaxStats.from_dict(plan.checkpoint.dense_stats)
    else:
        stats = fit_minmax_stats(plan.days, spec)  # every rank: deterministic, dense only

    trainer = Trainer(config, spec, stats, run, ctx)
    if plan.checkpoint is None:  # a resumed or warm-started run keeps its checkpoint's tables
        fit_attribute_shares(trainer.model, spec, plan.days, config.train.eval_batch_size)
    elif plan.warm_start:
        trainer.load_weights(plan.checkpoint)
    else:
        trainer.restore(plan.checkpoint)
    result = trainer.fit(
        plan.days, show_progress=show_progress, on_batch=on_batch, extra_columns=extra_columns
    )
    if config.train.recalibrate:
        recalibrate_heads(
            trainer.model,
            spec,
            plan.days,
            ctx,
            config.train.eval_batch_size,
            esmm_click_head=config.loss.esmm_scale_head,
        )
        checkpoint = trainer.save()  # the same step again, now with the offsets
        assert checkpoint is not None
        result = replace(result, checkpoint=checkpoint)
    return result


def train(
    config: ExperimentConfig | str | Path | None,
    data: str | Path | None,
    train_days: str | list[Path] | None,
    out: str | Path,
    *,
    init_from: str | Path | None = None,
    resume: ResumeMode = False,
    show_progress: bool = True,
    on_batch: BatchHook | None = None,
    extra_columns: Sequence[str] = (),
    spec: str | Path | None = None,
) -> TrainResult:
    """Train a model on ``train_days`` of ``data`` into run folder ``out``.

    ``config``: an :class:`ExperimentConfig`, a config path or a preset name.
    ``train_days``: a selection such as ``"1-10"`` (:func:`~dhen_cvr.days.select_days`)
    or a list of day folders. ``init_from``: a run or checkpoint folder to warm-start from
    (its weights and dense statistics; a fresh optimiser). ``resume``: continue the run in
    ``out`` from its newest checkpoint that loads; ``config``, ``data`` and ``train_days``
    are then read from the run folder (if given they must match). ``resume=True`` on a
    folder where no run was started is an error; ``resume="if-exists"`` starts it (so a
    scheduler can pass it every time). A run folder that never saved a checkpoint (a
    failed start) is started again, with or without ``resume``.
    ``spec``: the feature spec when it is not the data folder's ``_spec.yaml``.
    """
    plan = plan_training(
        config, data, train_days, out, init_from=init_from, resume=resume, spec=spec
    )
    return run_training(
        plan, show_progress=show_progress, on_batch=on_batch, extra_columns=extra_columns
    )


def _resume_plan(
    run: Path,
    config: ExperimentConfig | str | Path | None,
    data: str | Path | None,
    train_days: str | list[Path] | None,
    init_from: str | Path | None,
) -> TrainingPlan | None:
    """The stored config/data/days of ``run`` and the checkpoint to continue from
    (None: ``run`` was never started)."""
    info = read_run_folder(run)
    if info is None:
        return None
    if is_failed_start(run):  # stopped before its first checkpoint: start it again
        config = config if config is not None else info.config
        if not isinstance(config, ExperimentConfig):
            config = load_experiment_config(config)
        data_path = Path(data) if data is not None else info.data
        days = resolve_days(data_path, train_days or ",".join(info.train_days))
        warm = init_from if init_from is not None else info.init_from
        checkpoint = None if warm is None else load_checkpoint(warm)
        return TrainingPlan(run, config, data_path, days, checkpoint, True, spec=info.spec)
    stored = info.config
    if config is not None:
        given = config if isinstance(config, ExperimentConfig) else load_experiment_config(config)
        if _with_threads(given, None) != _with_threads(stored, None):
            raise DhenCvrError(
                f"cannot resume {run} with a different config; omit --config to use its own"
            )
        # CPU threads are the machine's business, not the run's: take the ones given now.
        stored = _with_threads(stored, given.train.threads)
    data_path = Path(data) if data is not None else info.data
    days = select_days(data_path, ",".join(info.train_days))
    if train_days is not None:
        given_days = [day_name(d) for d in resolve_days(data_path, train_days)]
        if given_days != info.train_days:
            raise DhenCvrError(f"cannot resume {run} on other training days than {info.train_days}")
    checkpoint = load_checkpoint(run)  # the newest that loads
    return TrainingPlan(run, stored, data_path, days, checkpoint, False, False, info.spec)


def _with_threads(config: ExperimentConfig, threads: int | None) -> ExperimentConfig:
    """``config`` with ``train.threads`` set to ``threads``."""
    train = config.train.model_copy(update={"threads": threads})
    return config.model_copy(update={"train": train})


def _check_compatible(checkpoint: Checkpoint, config: ExperimentConfig, spec: FeatureSpec) -> None:
    if checkpoint.config.get("model") != config.to_dict()["model"]:
        raise DhenCvrError(
            f"checkpoint {checkpoint.path} was trained with a different model config; "
            "warm starts need the same model section"
        )
    if checkpoint.spec.embedding_tables() != spec.embedding_tables():
        raise DhenCvrError(
            f"checkpoint {checkpoint.path} was trained on a spec with different embedding "
            "tables than the data's spec"
        )
