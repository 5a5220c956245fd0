"""One ParetoNet trial (paper 3.3, step 3): train briefly on the training days, score the
next day (ROC-AUC, PR-AUC), and measure throughput the same way for every config.

Throughput is timed on one fixed, in-memory batch of the first evaluation day's rows
(``throughput.batch_size`` rows; reading and decoding excluded), single process:

- training: a real optimiser step of :class:`~dhen_cvr.train.Trainer` (forward, the
  supervised and SSL losses, backward, clipping, Adam), on a copy of the trained weights;
- serving: the eval-mode forward without SSL outputs (what :mod:`dhen_cvr.eval` runs).

Each is the median over ``repeats`` timed steps after ``warmup`` untimed ones, in
examples/s. Runs sharing a machine see each other's load: compare trials measured under
the same ``--workers``.
"""

from __future__ import annotations

import copy
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dhen_cvr.data.batch import Batch
from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.data.spec import load_data_spec
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.days import resolve_days
from dhen_cvr.pipeline import train_and_evaluate
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.runtime.distributed import init_distributed
from dhen_cvr.search.space import Candidate, SearchSpace, ThroughputSettings
from dhen_cvr.search.store import TrialRecord
from dhen_cvr.train import Trainer

__all__ = ["measure_throughput", "run_trial"]


def _median_rate(step: Callable[[], None], rows: int, settings: ThroughputSettings) -> float:
    for _ in range(settings.warmup):
        step()
    times = []
    for _ in range(settings.repeats):
        _sync()
        started = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - started)
    return rows / max(statistics.median(times), 1e-9)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_throughput(
    trainer: Trainer, batch: Batch, settings: ThroughputSettings
) -> tuple[float, float]:
    """(training, serving) examples/s of ``trainer``'s model on ``batch``."""
    model = trainer.model

    @torch.no_grad()
    def serve() -> None:
        model.eval()
        model.encode(batch.dense, batch.pretrained, batch.categorical, batch.sequences, ssl=False)

    def train_step() -> None:
        trainer.step(batch, lr=1e-4)

    serving = _median_rate(serve, len(batch), settings)
    training = _median_rate(train_step, len(batch), settings)
    return training, serving


def run_trial(
    space: SearchSpace,
    candidate: Candidate,
    data: str | Path,
    train_days: str,
    eval_days: str,
    run: str | Path,
    *,
    extra_overrides: list[str] | None = None,
) -> TrialRecord:
    """Train + evaluate one candidate in ``run`` (a fresh folder), then time it."""
    started = time.perf_counter()
    run = Path(run)
    if run.exists():  # a trial killed before it was recorded starts again
        shutil.rmtree(run)
    config = space.experiment(candidate, extra_overrides)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    result = train_and_evaluate(
        config, data, train_days, run, eval_days=eval_days, show_progress=False
    )
    assert result.eval is not None
    report = result.eval
    served = [h for h in report.heads if report.served.get(h, True)]
    roc = [report.mean[h]["roc_auc"] for h in served]
    pr = [report.mean[h]["pr_auc"] for h in served]

    spec = load_data_spec(data)
    first_day = resolve_days(Path(data), eval_days)[0]
    stream = ParquetBatchStream(
        [first_day], spec, batch_size=space.throughput.batch_size, shuffle=False
    )
    batch = next(iter(stream))
    stats = MinMaxStats.from_dict(load_checkpoint(result.checkpoint).dense_stats)
    ctx = init_distributed(config.train.device)
    trainer = Trainer(config, spec, stats, run / "throughput", ctx)
    batch = batch.to(ctx.device)
    trainer.model.load_state_dict(copy.deepcopy(result.train.model.state_dict()))
    train_eps, serve_eps = measure_throughput(trainer, batch, space.throughput)
    return TrialRecord(
        key=candidate.key,
        candidate=candidate.model_dump(mode="json"),
        roc_auc=_mean(roc),
        pr_auc=_mean(pr),
        train_examples_per_s=train_eps,
        serve_examples_per_s=serve_eps,
        loop_examples_per_s=result.examples_per_s,
        wall_s=time.perf_counter() - started,
        per_head={h: report.mean[h]["roc_auc"] for h in report.heads},
    )


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan
